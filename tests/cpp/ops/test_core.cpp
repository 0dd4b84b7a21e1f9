// The binding's shared machinery: operator definitions checked against their schemas, and the
// CPU kernels' threads.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <mutex>
#include <set>
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
