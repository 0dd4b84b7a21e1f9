// posenc._C: an empty Python module whose import loads libposenc, the shared library whose
// static initialisers register the operators. Python and C++ programs share that one library,
// so the operators are registered once per process whichever way they are loaded.
#include <Python.h>

extern "C" int posenc_library_abi_version();

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "posenc native library (operators live in torch.ops.posenc)", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
    PyModule_AddIntConstant(module, "abi_version", posenc_library_abi_version());
  }
  return module;
}
