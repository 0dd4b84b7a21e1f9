// Every posenc schema, in one place. Backends register one boxed implementation for all of them
// in their own files: ops_cpu.cpp (CPU), ops_meta.cpp (Meta, for FakeTensor and torch.compile),
// autograd.cpp (Autograd), and ops_cuda.cpp when built with CUDA. Implementations read the
// arguments by these names (call.h), so the names here are the one spelling of each argument.
#include <torch/library.h>

TORCH_LIBRARY(posenc, m) {
  // y = dropout_p(combine(scale * x, PE(pos))); x: [..., T, D], positions: broadcastable to
  // [..., T], table: [P, D] (kind="learned"), seed: int64 scalar tensor (training and p > 0).
  // grid: the 2D/3D codes of patch tokens ((H, W) or (T, H, W), kernels::GridCode): positions
  // are then token indices, the first extra_tokens (cls) without a code, and channel segment s
  // (grid_dims[s] wide) codes axis grid_axes[s] at (index + grid_origin) * grid_scale.
  m.def(
      "add_positional(Tensor x, Tensor? positions=None, Tensor? table=None, Tensor? seed=None, *, "
      "str kind=\"sinusoidal\", str combine=\"add\", float scale=1.0, int offset=0, "
      "float base=10000.0, str convention=\"vaswani\", str layout=\"interleaved\", "
      "int[]? grid=None, int extra_tokens=0, int[]? grid_dims=None, "
      "int[]? grid_axes=None, int[]? grid_origin=None, float[]? grid_scale=None, "
      "float dropout=0.0, bool training=True) -> Tensor");
  // Gradient with respect to x of add_positional; grad: [..., T, D].
  m.def(
      "add_positional_backward(Tensor grad, Tensor? positions=None, Tensor? table=None, "
      "Tensor? seed=None, *, str kind=\"sinusoidal\", str combine=\"add\", float scale=1.0, "
      "int offset=0, float base=10000.0, str convention=\"vaswani\", "
      "str layout=\"interleaved\", int[]? grid=None, int extra_tokens=0, "
      "int[]? grid_dims=None, "
      "int[]? grid_axes=None, int[]? grid_origin=None, float[]? grid_scale=None, "
      "float dropout=0.0, bool training=True) -> Tensor");
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
  // Rotary position embedding of q (and k) with angles computed in the kernel. q, k: [B, S, H, D]
  // (layout "bshd"), [B, H, S, D] ("bhsd"), [S, B, H, D] ("sbhd") or [tokens, H, D] ("thd" with
  // cu_seqlens [sequences + 1]); heads may differ between q and k. positions: [S], [B, S] or
  // [tokens]; offsets: [B] (or [sequences]); inv_freq: [rotary_dim / 2]. Returns [q] or [q, k].
  // inverse=True rotates by the negative angle: the backward. precision="transformers" computes
  // the default frequencies and the angles pos * inv_freq in float32, as transformers does.
  m.def(
      "rotary(Tensor q, Tensor? k=None, Tensor? positions=None, Tensor? offsets=None, "
      "Tensor? inv_freq=None, Tensor? cu_seqlens=None, *, float base=10000.0, int offset=0, "
      "int? rotary_dim=None, bool interleaved=False, str layout=\"bshd\", "
      "float attention_factor=1.0, bool inverse=False, str precision=\"exact\", "
      "int[]? mrope_section=None, bool mrope_interleaved=False) -> Tensor[]");
  // transformers' apply_rotary_pos_emb with given cos/sin: [B, S, D] (or broadcastable to q
  // after unsqueeze(unsqueeze_dim)). transpose=True applies the transposed map: the backward.
  m.def(
      "rotary_tables(Tensor q, Tensor? k, Tensor cos, Tensor sin, *, int unsqueeze_dim=1, "
      "bool transpose=False) -> Tensor[]");
  // (inv_freq [dim / 2], attention_factor) for a Hugging Face rope_scaling type: float64 from the
  // formulas in double (precision="exact"), or float32 from transformers' float32 arithmetic.
  m.def(
      "rope_frequencies(int dim, *, float base=10000.0, str rope_type=\"default\", "
      "float? factor=None, int? max_position_embeddings=None, "
      "int? original_max_position_embeddings=None, int? seq_len=None, "
      "float? attention_factor=None, float beta_fast=32.0, float beta_slow=1.0, "
      "float? mscale=None, float? mscale_all_dim=None, bool truncate=True, "
      "float low_freq_factor=1.0, float high_freq_factor=4.0, float[]? short_factor=None, "
      "float[]? long_factor=None, str precision=\"exact\", "
      "float partial_rotary_factor=1.0) -> (Tensor, float)");
  // PE(positions): positions: any shape of integers -> [*positions.shape, dim].
  m.def(
      "positional_encoding(Tensor positions, int dim, *, str kind=\"sinusoidal\", "
      "float base=10000.0, str convention=\"vaswani\", str layout=\"interleaved\", "
      "int[]? grid=None, int extra_tokens=0, int[]? grid_dims=None, "
      "int[]? grid_axes=None, int[]? grid_origin=None, float[]? grid_scale=None, "
      "ScalarType? dtype=None) -> Tensor");
}

// Referenced by posenc._C so that importing it always loads this library.
extern "C" int posenc_library_abi_version() { return 1; }
