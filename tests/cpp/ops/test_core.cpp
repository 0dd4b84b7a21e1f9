// The binding's shared machinery: operator definitions checked against their schemas, arguments
// found by name, and the CPU kernels' threads.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "core/backend.h"
#include "core/operator.h"

namespace {

TEST(OperatorDefinition, AgreesWhenEveryArgumentIsParsed) {
  EXPECT_EQ(posenc::core::definition_mismatch(
                {"f(Tensor x, *, str kind=\"sinusoidal\", int offset=0) -> Tensor",
                 {"x", "kind", "offset"}}),
            "");
}

TEST(OperatorDefinition, NamesAParsedArgumentTheSchemaLacks) {
  // A misspelling in the schema: the parser's "kind" would otherwise never be found.
  EXPECT_EQ(posenc::core::definition_mismatch(
                {"f(Tensor x, *, str knd=\"sinusoidal\") -> Tensor", {"x", "kind"}}),
            "posenc::f: the parser reads 'kind', which the schema does not have");
}

TEST(OperatorDefinition, NamesASchemaArgumentNoParserReads) {
  // A misspelling in the parser's list, or an argument added to the schema alone.
  EXPECT_EQ(
      posenc::core::definition_mismatch(
          {"f(Tensor x, *, str kind=\"sinusoidal\", float scale=1.0) -> Tensor", {"x", "kind"}}),
      "posenc::f: the schema's argument 'scale' is not read by the parser");
}

TEST(OperatorDefinition, DefiningRefusesAMismatch) {
  torch::Library library(torch::Library::FRAGMENT, "posenc_test_definitions", std::nullopt,
                         __FILE__, __LINE__);
  EXPECT_THROW(
      posenc::core::define_schema(library, {"g(Tensor x, int knd=0) -> Tensor", {"x", "kind"}}),
      c10::Error);
}

// Every parser reads its arguments through argument_index (by the names' text, hashed): each
// argument of every registered posenc operator is found at its own index, from a copy of its
// name (another address), and names a schema lacks, near misses included, are not found.
TEST(ArgumentIndex, FindsEveryArgumentOfEveryOperatorAndNothingElse) {
  int operators = 0;
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("posenc::", 0) != 0) continue;
    const auto handle = c10::Dispatcher::singleton().findOp(name);
    ASSERT_TRUE(handle.has_value() && handle->hasSchema()) << name.name;
    const c10::FunctionSchema& schema = handle->schema();
    const auto& arguments = schema.arguments();
    for (size_t i = 0; i < arguments.size(); ++i) {
      const std::string copy = arguments[i].name();
      EXPECT_EQ(posenc::core::argument_index(schema, copy), static_cast<int>(i))
          << name.name << " " << copy;
      for (const std::string& other : {copy + "s", copy.substr(1), "_" + copy.substr(1)}) {
        bool present = false;
        for (const c10::Argument& argument : arguments) present |= argument.name() == other;
        if (!present) {
          EXPECT_EQ(posenc::core::argument_index(schema, other), -1) << name.name << " " << other;
        }
      }
    }
    EXPECT_EQ(posenc::core::argument_index(schema, ""), -1) << name.name;
    ++operators;
  }
  EXPECT_GE(operators, 10);
}

// Every CPU kernel gets its threads from core::parallel_for(); built without OpenMP it would run
// its body on the calling thread alone.
TEST(Parallel, TwoThreadsRunWhenTwoAreSet) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  posenc::core::parallel_for()(0, 1024, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  at::set_num_threads(before);
  EXPECT_EQ(threads.size(), 2u);
}

}  // namespace
