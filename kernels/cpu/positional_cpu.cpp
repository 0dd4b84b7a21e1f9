#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "positional.h"
#include "row_kernels.h"

namespace posenc {
namespace kernels {
namespace {

// The position of each row: params.positions / offset + t, or fairseq positions computed here.
class RowPositions {
 public:
  explicit RowPositions(const AddPositionalParams& params)
      : shape_(params.shape), index_(params.positions), offset_(params.offset) {
    if (!params.gather.fairseq_positions) return;
    const int64_t batch = shape_.batch_count();
    storage_.resize(static_cast<size_t>(batch * shape_.seq_len));
    for (int64_t b = 0; b < batch; ++b) {
      fairseq_positions_row(shape_, params.gather, b, storage_.data() + b * shape_.seq_len);
    }
    index_ = dense_index(shape_, storage_.data());
  }

  int64_t at(int64_t b, int64_t t) const { return cpu::position_at(shape_, index_, offset_, b, t); }

  bool shared_across_batch() const { return kernels::shared_across_batch(shape_, index_); }

  // Whether the (shared) positions of steps [t_begin, t_end) are consecutive integers from a
  // first one >= 0, which a walk from anchors needs (negative positions are evaluated directly).
  bool consecutive(int64_t t_begin, int64_t t_end) const {
    if (index_.data == nullptr) return true;  // offset + t, offset >= 0
    const int64_t first = at(0, t_begin);
    if (first < 0) return false;
    for (int64_t t = t_begin + 1; t < t_end; ++t) {
      if (at(0, t) != first + (t - t_begin)) return false;
    }
    return true;
  }

 private:
  const RowShape& shape_;
  StridedIndex index_;
  int64_t offset_;
  std::vector<int64_t> storage_;
};

// Elements per chunk of a row. Each chunk's dropout multipliers are made, and its share of the
// x row ahead prefetched, just before it is combined: the arithmetic overlaps the loads of x, and
// the prefetches are spread over the row instead of issued in one burst (faster; figures in
// docs/performance.md).
constexpr int64_t kRowChunk = 256;

// How many rows ahead the x rows are prefetched, and the bytes per prefetch: four rows beat two,
// and eight were no better than four (docs/performance.md).
constexpr int64_t kPrefetchRows = 4;
constexpr int64_t kCacheLine = 64;
constexpr int64_t kPageBytes = 4096;

// The output runs of a range of work items ending at `end` (item: batch index item % batch, rows
// [step_begin(item / batch), step_begin(item / batch + 1)) of it): in a dense out, the rows of one
// batch index lie back to back, and a range walks each batch index's rows upwards, so each batch
// index's rows in the range form one run, populated ahead of the writes (PopulateAhead) if runs can
// be long enough (which also bounds their count by the output's size).
class OutputRuns {
 public:
  template <typename StepBegin>
  OutputRuns(const AddPositionalParams& params, int64_t element_bytes, int64_t end,
             StepBegin&& step_begin) {
    const RowShape& shape = params.shape;
    const int64_t batch = shape.batch_count();
    const bool populate =
        params.out.dim_stride == 1 && (shape.seq_len == 1 || params.out.seq_stride == shape.dim) &&
        shape.seq_len * shape.dim * element_bytes >= cpu::PopulateAhead::kMinBytes;
    if (!populate) return;
    row_bytes_ = shape.dim * element_bytes;
    runs_.resize(static_cast<size_t>(batch));
    run_end_.resize(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      // This range's last item of batch index b ends the run.
      const int64_t last_item = end - 1 - (end - 1 - b) % batch;
      run_end_[static_cast<size_t>(b)] = step_begin(last_item / batch + 1);
    }
  }

  // Before writing the rows of batch index b from row t (at `out`) on.
  void at_row(int64_t b, int64_t t, void* out) {
    if (runs_.empty()) return;
    runs_[static_cast<size_t>(b)].at_row(out, (run_end_[static_cast<size_t>(b)] - t) * row_bytes_);
  }

 private:
  int64_t row_bytes_ = 0;
  std::vector<cpu::PopulateAhead> runs_;
  std::vector<int64_t> run_end_;  // [batch] the step after each batch index's run
};

// The rows of a walk from anchors without dropout: positions shared by the batch and consecutive
// from >= 0, and a code with walk tables. Work item = (one anchor's span of positions, batch
// index b), span-major: each item is one combine call over its rows (RowSpan), and a thread
// moves its anchor once per span, for every batch index to read.
template <typename scalar_t>
void combine_anchor_spans(const AddPositionalParams& params, const RowPositions& positions,
                          const cpu::PositionCodeRows<scalar_t>& code,
                          const ParallelFor& parallel_for) {
  using acc = acc_t<scalar_t>;
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  const acc scale = static_cast<acc>(params.scale);
  const int64_t span = code.anchor_span();
  const int64_t first = positions.at(0, 0);
  // Span 0 ends at the first anchor after `first`; every later one is a whole anchor span.
  const int64_t lead = span - first % span;
  auto step_begin = [&](int64_t i) {
    return i == 0 ? 0 : std::min(seq_len, lead + (i - 1) * span);
  };
  const int64_t span_count = seq_len <= lead ? 1 : 1 + (seq_len - lead + span - 1) / span;
  const int64_t grain = std::max<int64_t>(1, 32768 / (std::min(span, seq_len) * dim));
  parallel_for(0, span_count * batch, grain, [&](int64_t begin, int64_t end) {
    typename cpu::PositionCodeRows<scalar_t>::Recurrence recurrence_state;
    OutputRuns runs(params, static_cast<int64_t>(sizeof(scalar_t)), end, step_begin);
    int64_t i = begin / batch;
    int64_t b = begin % batch;
    for (int64_t item = begin; item < end; ++item, b = b + 1 == batch ? 0 : b + 1) {
      if (item > begin && b == 0) ++i;
      const int64_t t_begin = step_begin(i);
      const int64_t rows = step_begin(i + 1) - t_begin;
      const InputRow<scalar_t> in = input_row<scalar_t>(params, params.x, b, t_begin);
      scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(params.out.data)) +
                      cpu::batch_offset(shape, params.out.batch_strides, b) +
                      t_begin * params.out.seq_stride;
      runs.at_row(b, t_begin, out);
      cpu::combine_row(params.combine, in.data, in.stride,
                       code.anchored_row(first + t_begin, recurrence_state),
                       static_cast<const acc*>(nullptr), scale, out, params.out.dim_stride, dim,
                       cpu::RowSpan{rows, params.x.seq_stride, params.out.seq_stride});
    }
    code.keep_last_anchor(recurrence_state);
  });
}

}  // namespace

void add_positional_cpu(const AddPositionalParams& params, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  if (batch == 0 || seq_len == 0 || dim == 0) return;
  const bool needs_code = params.combine != Combine::kScaleOnly;
  const RowPositions positions(params);
  const bool shared = positions.shared_across_batch();

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(params.scale);
    const cpu::PositionCodeRows<scalar_t> code(params.source, dim, needs_code ? seq_len : 0);
    if (needs_code && shared && code.anchored() && !params.dropout.active &&
        params.gather.weight == nullptr && positions.consecutive(0, seq_len)) {
      combine_anchor_spans(params, positions, code, parallel_for);
      return;
    }
    // Otherwise (dropout, a gather, positions that do not walk, a learned table): work item =
    // (block of `block` steps t, batch index b), t-block major. A block's PE rows
    // (about 64 KiB) are computed once and reused for every b when positions do not depend on
    // b, and each item streams `block` consecutive rows of x and out, which the hardware
    // prefetchers follow (a t-major walk would jump a whole [T, D] slice per row).
    // With one batch row nothing is reused: each row's code is made chunk by chunk next to its
    // combine, from its anchor row where positions are consecutive (see anchored_row).
    const int64_t block =
        batch == 1 ? 1 : std::max<int64_t>(1, std::min<int64_t>(seq_len, 16384 / dim));
    const int64_t block_count = (seq_len + block - 1) / block;
    const int64_t grain = std::max<int64_t>(1, 32768 / (block * dim));
    parallel_for(0, block_count * batch, grain, [&](int64_t begin, int64_t end) {
      typename cpu::PositionCodeRows<scalar_t>::Recurrence recurrence_state;
      // One batch row walking consecutive positions: rows from their anchors.
      const bool walk_anchors =
          needs_code && batch == 1 && code.anchored() && positions.consecutive(begin, end);
      // Left uninitialised: a decoding step's row is not worth a memset.
      std::unique_ptr<acc[]> pe_block(
          needs_code && !walk_anchors ? new acc[static_cast<size_t>(block * dim)] : nullptr);
      int64_t pe_block_index = -1;  // which t-block pe_block holds (shared positions)
      int64_t pe_row_position = 0;  // which position pe_block's first row holds (otherwise)
      bool pe_row_valid = false;
      std::unique_ptr<acc[]> mask_chunk(params.dropout.active ? new acc[kRowChunk] : nullptr);
      OutputRuns runs(params, static_cast<int64_t>(sizeof(scalar_t)), end,
                      [&](int64_t t_block) { return std::min(seq_len, t_block * block); });
      const bool prefetch_rows = params.gather.weight != nullptr ||
                                 dim * static_cast<int64_t>(sizeof(scalar_t)) >= kPageBytes;
      // The item's t-block and batch index, stepped along with it (no division per item: a
      // single batch row's items are its rows).
      int64_t t_block = begin / batch;
      int64_t b = begin % batch;
      for (int64_t item = begin; item < end; ++item, b = b + 1 == batch ? 0 : b + 1) {
        if (item > begin && b == 0) ++t_block;
        const int64_t t_begin = t_block * block;
        const int64_t t_end = std::min(seq_len, t_begin + block);
        if (needs_code && shared && !walk_anchors && pe_block_index != t_block) {
          if (positions.consecutive(t_begin, t_end)) {
            code.evaluate_consecutive(positions.at(0, t_begin), t_end - t_begin, pe_block.get(),
                                      recurrence_state);
          } else {
            for (int64_t t = t_begin; t < t_end; ++t) {
              code.evaluate(positions.at(0, t), pe_block.get() + (t - t_begin) * dim);
            }
          }
          pe_block_index = t_block;
        }
        const int64_t out_base = cpu::batch_offset(shape, params.out.batch_strides, b);
        for (int64_t t = t_begin; t < t_end; ++t) {
          const InputRow<scalar_t> in = input_row<scalar_t>(params, params.x, b, t);
          const bool with_code = needs_code && !in.padding;
          cpu::RowCode<acc> pe;
          if (with_code && walk_anchors) {
            pe = code.anchored_row(positions.at(0, t), recurrence_state);
          } else if (with_code && shared) {
            pe.row = pe_block.get() + (t - t_begin) * dim;
          } else if (with_code) {
            const int64_t position = positions.at(b, t);
            if (!pe_row_valid || position != pe_row_position) {
              code.evaluate(position, pe_block.get());
            }
            pe_row_position = position;
            pe_row_valid = true;
            pe.row = pe_block.get();
          }
          const Combine combine = with_code ? params.combine : Combine::kScaleOnly;
          scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(params.out.data)) + out_base +
                          t * params.out.seq_stride;
          const int64_t out_stride = params.out.dim_stride;
          runs.at_row(b, t, out);
          // The x row kPrefetchRows ahead, fetched alongside this one: a row of 4 KiB or more
          // starts on a new page, where the hardware prefetchers stop (docs/performance.md).
          // Shorter rows of x are left to them (prefetching rows of 1 KiB cost a resident
          // (1, 2048, 256) a fifth of its time), but not gathered rows, which they cannot foresee.
          const scalar_t* row_ahead =
              prefetch_rows && t + kPrefetchRows < seq_len && in.stride == 1
                  ? input_row<scalar_t>(params, params.x, b, t + kPrefetchRows).data
                  : nullptr;
          auto prefetch_ahead = [&](int64_t begin, int64_t end) {
            if (row_ahead == nullptr) return;
            for (int64_t d = begin; d < end;
                 d += kCacheLine / static_cast<int64_t>(sizeof(scalar_t))) {
              __builtin_prefetch(row_ahead + d);
            }
          };
          const uint64_t first_element = static_cast<uint64_t>((b * seq_len + t) * dim);
          for (int64_t d0 = 0; d0 < dim; d0 += kRowChunk) {
            const int64_t count = std::min(kRowChunk, dim - d0);
            prefetch_ahead(d0, d0 + count);
            if (params.dropout.active) {
              cpu::dropout_multipliers(params.dropout, first_element + static_cast<uint64_t>(d0),
                                       count, mask_chunk.get());
            }
            cpu::combine_row(combine, in.data + d0 * in.stride, in.stride, pe.from_channel(d0),
                             params.dropout.active ? mask_chunk.get() : nullptr, scale,
                             out + d0 * out_stride, out_stride, count);
          }
        }
      }
      code.keep_last_anchor(recurrence_state);
    });
  });
}

namespace {

constexpr int64_t kChannelBlock = 64;

// Where a scatter sums each row's contribution. A half-type gradient is summed in float: the
// target rows that some token reaches get consecutive slots of a float buffer, and only those
// are converted, so that nothing of the output's size is written twice (zeroed in float, then
// converted), which made a bfloat16 weight gradient 2-4x slower than eager
// (docs/performance.md). float and double sum straight into the zeroed output.
template <typename scalar_t>
class ScatterSums {
 public:
  using acc = acc_t<scalar_t>;
  static constexpr bool kInPlace = std::is_same_v<scalar_t, acc>;

  // target(b, t): the output row that row (b, t) adds to, or -1 for none.
  template <typename Target>
  ScatterSums(const RowShape& shape, int64_t target_rows, void* out, Target&& target,
              const ParallelFor& parallel_for)
      : dim_(shape.dim),
        target_rows_(target_rows),
        out_(static_cast<scalar_t*>(out)),
        row_slot_(static_cast<size_t>(shape.batch_count() * shape.seq_len)) {
    if constexpr (!kInPlace) slot_of_target_.assign(static_cast<size_t>(target_rows), -1);
    int64_t slots = 0;
    for (int64_t b = 0; b < shape.batch_count(); ++b) {
      for (int64_t t = 0; t < shape.seq_len; ++t) {
        int64_t slot = target(b, t);
        if constexpr (!kInPlace) {
          if (slot >= 0) {
            int64_t& kept = slot_of_target_[static_cast<size_t>(slot)];
            if (kept < 0) kept = slots++;
            slot = kept;
          }
        }
        row_slot_[static_cast<size_t>(b * shape.seq_len + t)] = slot;
      }
    }
    if constexpr (kInPlace) {
      sums_ = out_;
      slots = target_rows;
    } else {
      buffer_.reset(new acc[static_cast<size_t>(slots * dim_)]);
      sums_ = buffer_.get();
    }
    zero_rows(sums_, slots, parallel_for);
  }

  // Row (b, t)'s sums from channel d0 on, or nullptr when it adds to no row.
  acc* row(int64_t b, int64_t t, int64_t seq_len, int64_t d0) const {
    const int64_t slot = row_slot_[static_cast<size_t>(b * seq_len + t)];
    return slot < 0 ? nullptr : sums_ + slot * dim_ + d0;
  }

  // Writes the output: each reached row's sums converted, every other row zero.
  void finish(const ParallelFor& parallel_for) const {
    if constexpr (!kInPlace) {
      parallel_for(0, target_rows_, rows_per_task(), [&](int64_t begin, int64_t end) {
        cpu::populate_fresh_pages(out_ + begin * dim_,
                                  static_cast<int64_t>(sizeof(scalar_t)) * (end - begin) * dim_);
        for (int64_t r = begin; r < end; ++r) {
          scalar_t* out = out_ + r * dim_;
          const int64_t slot = slot_of_target_[static_cast<size_t>(r)];
          if (slot < 0) {
            std::memset(static_cast<void*>(out), 0, sizeof(scalar_t) * dim_);
            continue;
          }
          const acc* sums = sums_ + slot * dim_;
          for (int64_t d = 0; d < dim_; ++d) store_from_acc(out + d, sums[d]);
        }
      });
    }
  }

 private:
  // About 16K elements a task.
  int64_t rows_per_task() const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(dim_, 1)); }

  void zero_rows(acc* rows, int64_t count, const ParallelFor& parallel_for) const {
    parallel_for(0, count, rows_per_task(), [&](int64_t begin, int64_t end) {
      const int64_t bytes = static_cast<int64_t>(sizeof(acc)) * (end - begin) * dim_;
      cpu::populate_fresh_pages(rows + begin * dim_, bytes);
      std::memset(static_cast<void*>(rows + begin * dim_), 0, static_cast<size_t>(bytes));
    });
  }

  int64_t dim_;
  int64_t target_rows_;
  scalar_t* out_;
  std::vector<int64_t> row_slot_;        // [batch * seq_len] the slot of each row, -1 for none
  std::vector<int64_t> slot_of_target_;  // [target_rows] the slot of each target, -1 for none
  std::unique_ptr<acc[]> buffer_;        // [slots, dim] the float sums of a half type
  acc* sums_ = nullptr;
};

// Runs body(b, t, d0, width, grad_row, mask, scratch) for every row in one fixed order, with
// each thread owning a block of channels, so scatter-adds into a shared buffer are race-free and
// give the same bits for any number of threads. grad_row points at grad[b, t, d0]; mask holds
// the dropout multipliers of those `width` elements (nullptr without dropout); scratch is a
// per-thread buffer of kChannelBlock values.
template <typename scalar_t, typename Body>
void for_rows_by_channel_block(const AddPositionalParams& params, const ParallelFor& parallel_for,
                               Body&& body) {
  using acc = acc_t<scalar_t>;
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  const int64_t block_count = (dim + kChannelBlock - 1) / kChannelBlock;
  parallel_for(0, block_count, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<acc> mask(kChannelBlock);
    std::vector<acc> scratch(kChannelBlock);
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t d0 = block * kChannelBlock;
      const int64_t width = std::min(kChannelBlock, dim - d0);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t grad_base = cpu::batch_offset(shape, params.x.batch_strides, b);
        for (int64_t t = 0; t < seq_len; ++t) {
          const scalar_t* grad = static_cast<const scalar_t*>(params.x.data) + grad_base +
                                 t * params.x.seq_stride + d0 * params.x.dim_stride;
          if (params.dropout.active) {
            const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim + d0);
            cpu::dropout_multipliers(params.dropout, first, width, mask.data());
          }
          body(b, t, d0, width, grad, params.dropout.active ? mask.data() : nullptr,
               scratch.data());
        }
      }
    }
  });
}

}  // namespace

void add_positional_table_backward_cpu(const AddPositionalParams& params, const StridedRows& input,
                                       void* grad_table, int64_t table_rows,
                                       const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const bool multiply = params.combine == Combine::kMul;
  const RowPositions positions(params);
  const int64_t grad_stride = params.x.dim_stride;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(params.scale);
    // Padding tokens get no position code, so no gradient.
    const ScatterSums<scalar_t> sums(
        shape, table_rows, grad_table,
        [&](int64_t b, int64_t t) {
          return input_row<scalar_t>(params, input, b, t).padding ? -1 : positions.at(b, t);
        },
        parallel_for);
    for_rows_by_channel_block<scalar_t>(
        params, parallel_for,
        [&](int64_t b, int64_t t, int64_t d0, int64_t width, const scalar_t* grad, const acc* mask,
            acc* /*scratch*/) {
          acc* out = sums.row(b, t, shape.seq_len, d0);
          if (out == nullptr) return;
          const InputRow<scalar_t> in = input_row<scalar_t>(params, input, b, t);
          const scalar_t* x = multiply ? in.data + d0 * in.stride : nullptr;
          for (int64_t k = 0; k < width; ++k) {
            acc g = load_as_acc(grad + k * grad_stride);
            if (mask != nullptr) g *= mask[k];
            if (multiply) g *= scale * load_as_acc(x + k * in.stride);
            out[k] += g;
          }
        });
    sums.finish(parallel_for);
  });
}

void embedding_weight_backward_cpu(const AddPositionalParams& params, void* grad_weight,
                                   int64_t vocab, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const EmbeddingGather& gather = params.gather;
  const bool multiply = params.combine == Combine::kMul;
  const RowPositions positions(params);
  const int64_t grad_stride = params.x.dim_stride;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(params.scale);
    const cpu::PositionCodeRows<scalar_t> code(params.source, shape.dim, /*walk_rows=*/1);
    // As nn.Embedding: no gradient for the padding row.
    const ScatterSums<scalar_t> sums(
        shape, vocab, grad_weight,
        [&](int64_t b, int64_t t) {
          const int64_t id = cpu::index_at(shape, gather.ids, b, t);
          return id == gather.padding_idx ? -1 : id;
        },
        parallel_for);
    for_rows_by_channel_block<scalar_t>(params, parallel_for,
                                        [&](int64_t b, int64_t t, int64_t d0, int64_t width,
                                            const scalar_t* grad, const acc* mask, acc* pe) {
                                          acc* out = sums.row(b, t, shape.seq_len, d0);
                                          if (out == nullptr) return;
                                          if (multiply)
                                            code.evaluate(positions.at(b, t), pe, d0, d0 + width);
                                          for (int64_t k = 0; k < width; ++k) {
                                            acc g = scale * load_as_acc(grad + k * grad_stride);
                                            if (mask != nullptr) g *= mask[k];
                                            if (multiply) g *= pe[k];
                                            out[k] += g;
                                          }
                                        });
    sums.finish(parallel_for);
  });
}

}  // namespace kernels
}  // namespace posenc
