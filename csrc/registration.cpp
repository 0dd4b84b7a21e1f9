// Every posenc schema, in one place. Backends register implementations in their own files:
// ops_cpu.cpp (CPU), ops_meta.cpp (Meta, for FakeTensor and torch.compile), autograd.cpp
// (Autograd), and ops_cuda.cpp when built with CUDA.
#include <torch/library.h>

TORCH_LIBRARY(posenc, m) {
  // y = dropout_p(combine(scale * x, PE(pos))); x: [..., T, D], positions: broadcastable to
  // [..., T], table: [P, D] (kind="learned"), seed: int64 scalar tensor (training and p > 0).
  m.def(
      "add_positional(Tensor x, Tensor? positions=None, Tensor? table=None, Tensor? seed=None, *, "
      "str kind=\"sinusoidal\", str combine=\"add\", float scale=1.0, int offset=0, "
      "float base=10000.0, str convention=\"vaswani\", str layout=\"interleaved\", "
      "float dropout=0.0, bool training=True) -> Tensor");
  // Gradient with respect to x of add_positional; grad: [..., T, D].
  m.def(
      "add_positional_backward(Tensor grad, Tensor? positions=None, Tensor? table=None, "
      "Tensor? seed=None, *, str kind=\"sinusoidal\", str combine=\"add\", float scale=1.0, "
      "int offset=0, float base=10000.0, str convention=\"vaswani\", "
      "str layout=\"interleaved\", float dropout=0.0, bool training=True) -> Tensor");
  // Gradient with respect to the learned table: [table_rows, D]. x is needed for combine="mul".
  m.def(
      "add_positional_table_backward(Tensor grad, Tensor? x, Tensor? positions, Tensor? seed, "
      "SymInt table_rows, *, str combine=\"add\", float scale=1.0, int offset=0, "
      "float dropout=0.0, bool training=True) -> Tensor");
  // y = dropout_p(combine(scale * weight[ids], PE(pos))); ids: [..., T], weight: [V, D] ->
  // [..., T, D]. scale=None means sqrt(D). Tokens equal to padding_idx get no position code.
  // fairseq_positions: positions from fairseq's make_positions (needs padding_idx).
  m.def(
      "embedding(Tensor ids, Tensor weight, Tensor? positions=None, Tensor? table=None, "
      "Tensor? seed=None, *, str kind=\"sinusoidal\", str combine=\"add\", float? scale=None, "
      "int offset=0, int? padding_idx=None, bool fairseq_positions=False, float base=10000.0, "
      "str convention=\"vaswani\", str layout=\"interleaved\", float dropout=0.0, "
      "bool training=True) -> Tensor");
  // Gradient with respect to weight: [V, D] (weight gives the shape); grad: [..., T, D].
  m.def(
      "embedding_backward(Tensor grad, Tensor ids, Tensor weight, Tensor? positions, "
      "Tensor? table, Tensor? seed, *, str kind=\"sinusoidal\", str combine=\"add\", "
      "float? scale=None, int offset=0, int? padding_idx=None, bool fairseq_positions=False, "
      "float base=10000.0, str convention=\"vaswani\", str layout=\"interleaved\", "
      "float dropout=0.0, bool training=True) -> Tensor");
  // Gradient with respect to the learned table: [table_rows, D].
  m.def(
      "embedding_table_backward(Tensor grad, Tensor ids, Tensor weight, Tensor? positions, "
      "Tensor? seed, SymInt table_rows, *, str combine=\"add\", float? scale=None, int offset=0, "
      "int? padding_idx=None, bool fairseq_positions=False, float dropout=0.0, "
      "bool training=True) -> Tensor");
  // PE(positions): positions: any shape of integers -> [*positions.shape, dim].
  m.def(
      "positional_encoding(Tensor positions, int dim, *, str kind=\"sinusoidal\", "
      "float base=10000.0, str convention=\"vaswani\", str layout=\"interleaved\", "
      "ScalarType? dtype=None) -> Tensor");
}

// Referenced by posenc._C so that importing it always loads this library.
extern "C" int posenc_library_abi_version() { return 1; }
