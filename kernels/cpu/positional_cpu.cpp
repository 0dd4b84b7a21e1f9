#include <algorithm>
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

  // Whether the (shared) positions of steps [t_begin, t_end) are consecutive integers.
  bool consecutive(int64_t t_begin, int64_t t_end) const {
    if (index_.data == nullptr) return true;  // offset + t
    const int64_t first = at(0, t_begin);
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
    // Work item = (block of `block` steps t, batch index b), t-block major. A block's PE rows
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
      std::vector<acc> pe_block(needs_code ? static_cast<size_t>(block * dim) : 0);
      int64_t pe_block_index = -1;   // which t-block pe_block holds (shared positions)
      int64_t pe_row_position = -1;  // which position pe_block's first row holds (otherwise)
      std::vector<acc> mask_chunk(kRowChunk);
      typename cpu::PositionCodeRows<scalar_t>::Recurrence recurrence_state;
      // One batch row walking consecutive positions: rows from their anchors.
      const bool walk_anchors =
          needs_code && batch == 1 && code.anchored() && positions.consecutive(begin, end);
      // In a dense out, the rows of one batch index lie back to back, and this range walks each
      // batch index's rows upwards: one run per batch index, if runs can be long enough to be
      // populated (which also bounds the runs' count by the output's size).
      const bool populate_runs =
          params.out.dim_stride == 1 && (seq_len == 1 || params.out.seq_stride == dim) &&
          seq_len * dim * static_cast<int64_t>(sizeof(scalar_t)) >= cpu::PopulateAhead::kMinBytes;
      std::vector<cpu::PopulateAhead> populate(populate_runs ? static_cast<size_t>(batch) : 0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t_block = item / batch;
        const int64_t b = item % batch;
        const int64_t t_begin = t_block * block;
        const int64_t t_end = std::min(seq_len, t_begin + block);
        if (needs_code && shared && !walk_anchors && pe_block_index != t_block) {
          if (positions.consecutive(t_begin, t_end)) {
            code.evaluate_consecutive(positions.at(0, t_begin), t_end - t_begin, pe_block.data(),
                                      recurrence_state);
          } else {
            for (int64_t t = t_begin; t < t_end; ++t) {
              code.evaluate(positions.at(0, t), pe_block.data() + (t - t_begin) * dim);
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
            pe.row = pe_block.data() + (t - t_begin) * dim;
          } else if (with_code) {
            const int64_t position = positions.at(b, t);
            if (position != pe_row_position) code.evaluate(position, pe_block.data());
            pe_row_position = position;
            pe.row = pe_block.data();
          }
          const Combine combine = with_code ? params.combine : Combine::kScaleOnly;
          scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(params.out.data)) + out_base +
                          t * params.out.seq_stride;
          const int64_t out_stride = params.out.dim_stride;
          if (populate_runs) {
            // This range's last row of batch index b ends the run.
            const int64_t last_item = end - 1 - (end - 1 - b) % batch;
            const int64_t run_end = std::min(seq_len, (last_item / batch + 1) * block);
            populate[static_cast<size_t>(b)].at_row(
                out, (run_end - t) * dim * static_cast<int64_t>(sizeof(scalar_t)));
          }
          // The x row kPrefetchRows ahead, fetched alongside this one: a row of 4 KiB or more
          // starts on a new page, where the hardware prefetchers stop (docs/performance.md).
          const scalar_t* row_ahead =
              t + kPrefetchRows < seq_len && in.stride == 1
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
                                       count, mask_chunk.data());
            }
            cpu::combine_row(combine, in.data + d0 * in.stride, in.stride, pe.from_channel(d0),
                             params.dropout.active ? mask_chunk.data() : nullptr, scale,
                             out + d0 * out_stride, out_stride, count);
          }
        }
      }
    });
  });
}

namespace {

constexpr int64_t kChannelBlock = 64;

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
                                       void* grad_table, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  if (shape.batch_count() == 0 || shape.seq_len == 0 || shape.dim == 0) return;
  const bool multiply = params.combine == Combine::kMul;
  const RowPositions positions(params);
  const int64_t grad_stride = params.x.dim_stride;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    acc* table_grad = static_cast<acc*>(grad_table);
    const acc scale = static_cast<acc>(params.scale);
    for_rows_by_channel_block<scalar_t>(
        params, parallel_for,
        [&](int64_t b, int64_t t, int64_t d0, int64_t width, const scalar_t* grad, const acc* mask,
            acc* /*scratch*/) {
          const InputRow<scalar_t> in = input_row<scalar_t>(params, input, b, t);
          if (in.padding) return;  // padding tokens get no position code
          acc* out = table_grad + positions.at(b, t) * shape.dim + d0;
          const scalar_t* x = multiply ? in.data + d0 * in.stride : nullptr;
          for (int64_t k = 0; k < width; ++k) {
            acc g = load_as_acc(grad + k * grad_stride);
            if (mask != nullptr) g *= mask[k];
            if (multiply) g *= scale * load_as_acc(x + k * in.stride);
            out[k] += g;
          }
        });
  });
}

void embedding_weight_backward_cpu(const AddPositionalParams& params, void* grad_weight,
                                   const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  if (shape.batch_count() == 0 || shape.seq_len == 0 || shape.dim == 0) return;
  const EmbeddingGather& gather = params.gather;
  const bool multiply = params.combine == Combine::kMul;
  const RowPositions positions(params);
  const int64_t grad_stride = params.x.dim_stride;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    acc* weight_grad = static_cast<acc*>(grad_weight);
    const acc scale = static_cast<acc>(params.scale);
    const cpu::PositionCodeRows<scalar_t> code(params.source, shape.dim, /*walk_rows=*/1);
    for_rows_by_channel_block<scalar_t>(params, parallel_for,
                                        [&](int64_t b, int64_t t, int64_t d0, int64_t width,
                                            const scalar_t* grad, const acc* mask, acc* pe) {
                                          const int64_t id = cpu::index_at(shape, gather.ids, b, t);
                                          if (id == gather.padding_idx)
                                            return;  // as nn.Embedding: no gradient for padding
                                          if (multiply)
                                            code.evaluate(positions.at(b, t), pe, d0, d0 + width);
                                          acc* out = weight_grad + id * shape.dim + d0;
                                          for (int64_t k = 0; k < width; ++k) {
                                            acc g = scale * load_as_acc(grad + k * grad_stride);
                                            if (mask != nullptr) g *= mask[k];
                                            if (multiply) g *= pe[k];
                                            out[k] += g;
                                          }
                                        });
  });
}

}  // namespace kernels
}  // namespace posenc
