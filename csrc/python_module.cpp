// posenc._C: the Python module whose import loads libposenc (the shared library whose static
// initialisers register the operators; Python and C++ programs share it, so the operators are
// registered once per process), and the direct caller the Python wrappers use outside tracing.
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <string>
#include <vector>

extern "C" int posenc_library_abi_version();

namespace {

// What the direct caller converts; an operator with another argument or result type has none.
enum class ArgumentKind { kTensor, kString, kFloat, kInt, kBool, kInts, kFloats, kScalarType };
enum class ResultKind { kTensor, kTensors };

// One operator's direct caller: its handle and, in schema order, each argument's kind.
struct DirectCall {
  c10::OperatorHandle handle;
  std::vector<ArgumentKind> kinds;
  std::vector<bool> optional;
  ResultKind result;
};

bool kind_of(const c10::TypePtr& type, ArgumentKind& kind) {
  switch (type->kind()) {
    case c10::TypeKind::TensorType:
      kind = ArgumentKind::kTensor;
      return true;
    case c10::TypeKind::StringType:
      kind = ArgumentKind::kString;
      return true;
    case c10::TypeKind::FloatType:
      kind = ArgumentKind::kFloat;
      return true;
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType:
      kind = ArgumentKind::kInt;
      return true;
    case c10::TypeKind::BoolType:
      kind = ArgumentKind::kBool;
      return true;
    case c10::TypeKind::ScalarTypeType:
      kind = ArgumentKind::kScalarType;
      return true;
    case c10::TypeKind::ListType: {
      const c10::TypeKind element = type->containedType(0)->kind();
      if (element == c10::TypeKind::IntType || element == c10::TypeKind::SymIntType) {
        kind = ArgumentKind::kInts;
        return true;
      }
      if (element == c10::TypeKind::FloatType) {
        kind = ArgumentKind::kFloats;
        return true;
      }
      return false;
    }
    default:
      return false;
  }
}

void free_direct_call(PyObject* capsule) {
  delete static_cast<DirectCall*>(PyCapsule_GetPointer(capsule, "posenc.DirectCall"));
}

// _C.direct_call(name) -> a capsule for _C.call, or None when posenc::<name> has an argument or a
// result the direct caller does not convert (its wrapper then always calls the OpOverload).
PyObject* direct_call(PyObject* /*module*/, PyObject* name) {
  HANDLE_TH_ERRORS
  const char* text = PyUnicode_AsUTF8(name);
  if (text == nullptr) return nullptr;
  auto call = std::make_unique<DirectCall>(DirectCall{
      c10::Dispatcher::singleton().findSchemaOrThrow((std::string("posenc::") + text).c_str(), ""),
      {},
      {},
      ResultKind::kTensor});
  const c10::FunctionSchema& schema = call->handle.schema();
  for (const c10::Argument& argument : schema.arguments()) {
    // real_type: ScalarType is an int to the type checker, a dtype to Python.
    c10::TypePtr type = argument.real_type();
    const bool optional = type->kind() == c10::TypeKind::OptionalType;
    if (optional) type = type->containedType(0);
    ArgumentKind kind;
    if (!kind_of(type, kind)) Py_RETURN_NONE;
    call->kinds.push_back(kind);
    call->optional.push_back(optional);
  }
  const auto& returns = schema.returns();
  if (returns.size() != 1) Py_RETURN_NONE;
  const c10::TypePtr& result = returns[0].type();
  if (result->kind() == c10::TypeKind::TensorType) {
    call->result = ResultKind::kTensor;
  } else if (result->kind() == c10::TypeKind::ListType &&
             result->containedType(0)->kind() == c10::TypeKind::TensorType) {
    call->result = ResultKind::kTensors;
  } else {
    Py_RETURN_NONE;
  }
  return PyCapsule_New(call.release(), "posenc.DirectCall", &free_direct_call);
  END_HANDLE_TH_ERRORS
}

// `value` as the IValue of an argument of `kind`, or false when it is not plainly one (a symbolic
// number, a subclass of int, ...): the caller then leaves the call to the OpOverload, whose
// argument parsing accepts or refuses it with its own message.
bool to_ivalue(PyObject* value, ArgumentKind kind, bool optional, c10::IValue& out) {
  if (value == Py_None) {
    out = c10::IValue();
    return optional;
  }
  switch (kind) {
    case ArgumentKind::kTensor:
      if (!THPVariable_CheckExact(value)) return false;
      out = THPVariable_Unpack(value);
      return true;
    case ArgumentKind::kString: {
      if (!PyUnicode_CheckExact(value)) return false;
      Py_ssize_t size = 0;
      const char* text = PyUnicode_AsUTF8AndSize(value, &size);
      if (text == nullptr) {
        PyErr_Clear();
        return false;
      }
      out = std::string(text, static_cast<size_t>(size));
      return true;
    }
    case ArgumentKind::kFloat:
      if (!PyFloat_CheckExact(value)) return false;
      out = PyFloat_AS_DOUBLE(value);
      return true;
    case ArgumentKind::kInt: {
      if (!PyLong_CheckExact(value)) return false;
      int overflow = 0;
      const long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
      if (overflow != 0 || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return false;
      }
      out = static_cast<int64_t>(number);
      return true;
    }
    case ArgumentKind::kBool:
      if (!PyBool_Check(value)) return false;
      out = value == Py_True;
      return true;
    case ArgumentKind::kScalarType:
      if (!THPDtype_Check(value)) return false;
      out = reinterpret_cast<THPDtype*>(value)->scalar_type;
      return true;
    case ArgumentKind::kInts:
    case ArgumentKind::kFloats: {
      if (!PyList_CheckExact(value) && !PyTuple_CheckExact(value)) return false;
      const Py_ssize_t size = PySequence_Fast_GET_SIZE(value);
      PyObject** items = PySequence_Fast_ITEMS(value);
      if (kind == ArgumentKind::kFloats) {
        std::vector<double> numbers;
        for (Py_ssize_t i = 0; i < size; ++i) {
          if (!PyFloat_CheckExact(items[i])) return false;
          numbers.push_back(PyFloat_AS_DOUBLE(items[i]));
        }
        out = numbers;
        return true;
      }
      std::vector<int64_t> numbers;
      for (Py_ssize_t i = 0; i < size; ++i) {
        c10::IValue number;
        if (!to_ivalue(items[i], ArgumentKind::kInt, false, number)) return false;
        numbers.push_back(number.toInt());
      }
      out = numbers;
      return true;
    }
  }
  return false;
}

// Released while the operator runs, as torch's own operator calls do (held again on unwinding).
struct ReleasedGil {
  ReleasedGil() : state(PyEval_SaveThread()) {}
  ~ReleasedGil() { PyEval_RestoreThread(state); }
  PyThreadState* state;
};

// _C.call(direct_call, *arguments) -> the operator's result, or NotImplemented when the call is
// not one to make directly: an argument the direct caller does not convert, a tensor subclass,
// an active __torch_function__ mode, or no tensor at all. Every argument of the schema is given, in
// order; the dispatcher then runs the call as it runs the OpOverload's (autograd, every backend,
// dispatch modes), skipping the generic Python argument parsing (about 2 us of a decoding step).
PyObject* call(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "posenc._C.call needs a direct_call capsule");
    return nullptr;
  }
  const auto* direct =
      static_cast<const DirectCall*>(PyCapsule_GetPointer(args[0], "posenc.DirectCall"));
  if (direct == nullptr) return nullptr;
  const size_t count = direct->kinds.size();
  if (static_cast<size_t>(nargs - 1) != count) {
    PyErr_Format(PyExc_TypeError, "posenc._C.call: %s takes %zu arguments, got %zd",
                 direct->handle.schema().name().c_str(), count, nargs - 1);
    return nullptr;
  }
  PyObject* const* values = args + 1;
  // An active __torch_function__ mode, or a tensor subclass (which may define
  // __torch_function__; to_ivalue takes only Tensor and Parameter, which define none), goes
  // through torch's own dispatch.
  if (at::impl::PythonTorchFunctionTLS::stack_len() != 0) Py_RETURN_NOTIMPLEMENTED;
  torch::jit::Stack stack;
  stack.reserve(count);
  bool any_tensor = false;
  for (size_t i = 0; i < count; ++i) {
    c10::IValue value;
    if (!to_ivalue(values[i], direct->kinds[i], direct->optional[i], value)) {
      Py_RETURN_NOTIMPLEMENTED;
    }
    any_tensor = any_tensor || value.isTensor();
    stack.push_back(std::move(value));
  }
  if (!any_tensor) Py_RETURN_NOTIMPLEMENTED;
  {
    const ReleasedGil released;
    direct->handle.callBoxed(stack);
  }
  if (direct->result == ResultKind::kTensor) return THPVariable_Wrap(stack.back().toTensor());
  const std::vector<at::Tensor> results = stack.back().toTensorVector();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(results.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < results.size(); ++i) {
    PyObject* tensor = THPVariable_Wrap(results[i]);
    if (tensor == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), tensor);
  }
  return list;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"direct_call", reinterpret_cast<PyCFunction>(direct_call), METH_O,
     "direct_call(name) -> the capsule of posenc::<name> for call(), or None"},
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call)), METH_FASTCALL,
     "call(direct_call, *arguments) -> the operator's result, or NotImplemented"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "posenc native library (operators live in torch.ops.posenc)", -1,
                                   methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
    PyModule_AddIntConstant(module, "abi_version", posenc_library_abi_version());
  }
  return module;
}
