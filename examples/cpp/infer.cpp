// C++ inference of a model built in Python from posenc.nn layers (examples/cpp/export_model.py):
// the AOTInductor package and the TorchScript module must give Python's output.
//   infer_cpp DATA_DIR    (model.pt2, model_ts.pt, input.bin, expected.bin)
#include <posenc/posenc.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <string>

// Reads the shape header (ndim, sizes as int64) and the raw data written by export_model.py.
torch::Tensor read_tensor(const std::string& path, torch::ScalarType dtype) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "cannot open ", path);
  int64_t ndim = 0;
  in.read(reinterpret_cast<char*>(&ndim), sizeof(ndim));
  std::vector<int64_t> sizes(ndim);
  in.read(reinterpret_cast<char*>(sizes.data()), ndim * sizeof(int64_t));
  auto tensor = torch::empty(sizes, dtype);
  in.read(reinterpret_cast<char*>(tensor.data_ptr()), tensor.nbytes());
  TORCH_CHECK(in, "short read from ", path);
  return tensor;
}

bool report(const char* what, const torch::Tensor& got, const torch::Tensor& expected) {
  const double error = (got - expected).abs().max().item<double>();
  const bool ok = got.sizes() == expected.sizes() && error <= 1e-5;
  std::printf("%-12s max |C++ - Python| = %.3g  %s\n", what, error, ok ? "ok" : "MISMATCH");
  return ok;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DATA_DIR\n", argv[0]);
    return 2;
  }
  // Keeps libposenc linked: the models reach its operators only through the dispatcher.
  std::printf("posenc ABI %d\n", posenc_library_abi_version());
  const std::string dir = argv[1];
  const auto ids = read_tensor(dir + "/input.bin", torch::kLong);
  const auto expected = read_tensor(dir + "/expected.bin", torch::kFloat);
  torch::NoGradGuard no_grad;
  bool ok = true;

  torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
  ok &= report("AOTInductor", loader.run({ids})[0], expected);

  auto scripted = torch::jit::load(dir + "/model_ts.pt");
  scripted.eval();
  ok &= report("TorchScript", scripted.forward({ids}).toTensor(), expected);
  return ok ? 0 : 1;
}
