// The importable module nlseq._C. Importing it loads this library, whose static initialisers
// register the nlseq_ext ops (TORCH_LIBRARY_FRAGMENT in csrc/torch/*.cpp) with the dispatcher.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "nlseq compiled kernels (ops in torch.ops.nlseq_ext)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
