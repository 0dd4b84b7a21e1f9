#include <algorithm>
#include <vector>

#include "positional.h"
#include "row_kernels.h"

namespace posenc {
namespace kernels {

namespace {

bool positions_shared_across_batch(const RowShape& shape, const StridedIndex& positions) {
  if (positions.data == nullptr) return true;
  for (int i = 0; i < shape.batch_ndim; ++i) {
    if (positions.batch_strides[i] != 0 && shape.batch_sizes[i] != 1) return false;
  }
  return true;
}

}  // namespace

void add_positional_cpu(const AddPositionalParams& params, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  if (batch == 0 || seq_len == 0 || dim == 0) return;
  const bool needs_code = params.combine != Combine::kScaleOnly;
  const bool shared = positions_shared_across_batch(shape, params.positions);

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(params.scale);
    const cpu::PositionCodeRows<scalar_t> code(params.source, dim);
    // Work item = (block of `block` steps t, batch index b), t-block major. A block's PE rows
    // (about 64 KiB) are computed once and reused for every b when positions do not depend on
    // b, and each item streams `block` consecutive rows of x and out, which the hardware
    // prefetchers follow (a t-major walk would jump a whole [T, D] slice per row).
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(seq_len, 16384 / dim));
    const int64_t block_count = (seq_len + block - 1) / block;
    const int64_t grain = std::max<int64_t>(1, 32768 / (block * dim));
    parallel_for(0, block_count * batch, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc> pe_block(needs_code ? static_cast<size_t>(block * dim) : 0);
      int64_t pe_block_index = -1;  // which t-block pe_block holds (shared positions)
      int64_t pe_row_position = -1;  // which position pe_block's first row holds (otherwise)
      std::vector<acc> mask(params.dropout.active ? static_cast<size_t>(dim) : 0);
      std::vector<uint16_t> draws;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t_block = item / batch;
        const int64_t b = item % batch;
        const int64_t t_begin = t_block * block;
        const int64_t t_end = std::min(seq_len, t_begin + block);
        if (needs_code && shared && pe_block_index != t_block) {
          for (int64_t t = t_begin; t < t_end; ++t) {
            code.evaluate(cpu::position_at(shape, params.positions, params.offset, 0, t),
                          pe_block.data() + (t - t_begin) * dim);
          }
          pe_block_index = t_block;
        }
        const int64_t x_base = cpu::batch_offset(shape, params.x.batch_strides, b);
        const int64_t out_base = cpu::batch_offset(shape, params.out.batch_strides, b);
        for (int64_t t = t_begin; t < t_end; ++t) {
          const acc* pe = nullptr;
          if (needs_code && shared) {
            pe = pe_block.data() + (t - t_begin) * dim;
          } else if (needs_code) {
            const int64_t position = cpu::position_at(shape, params.positions, params.offset, b, t);
            if (position != pe_row_position) code.evaluate(position, pe_block.data());
            pe_row_position = position;
            pe = pe_block.data();
          }
          if (params.dropout.active) {
            const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim);
            cpu::fill_dropout_multipliers(params.dropout, first, dim, draws, mask.data());
          }
          const scalar_t* in = static_cast<const scalar_t*>(params.x.data);
          if (in != nullptr) in += x_base + t * params.x.seq_stride;
          scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(params.out.data)) + out_base +
                          t * params.out.seq_stride;
          cpu::combine_row(params.combine, in, params.x.dim_stride, pe,
                           params.dropout.active ? mask.data() : nullptr, scale, out,
                           params.out.dim_stride, dim);
        }
      }
    });
  });
}

void add_positional_table_backward_cpu(const AddPositionalParams& params, const StridedRows& input,
                                       void* grad_table, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  if (batch == 0 || seq_len == 0 || dim == 0) return;
  constexpr int64_t kChannelBlock = 64;
  const int64_t block_count = (dim + kChannelBlock - 1) / kChannelBlock;
  const bool multiply = params.combine == Combine::kMul;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    acc* table_grad = static_cast<acc*>(grad_table);
    const acc scale = static_cast<acc>(params.scale);
    // Each thread owns a block of channels and visits every row in one fixed order, so the
    // sums are race-free and bit-identical for any number of threads.
    parallel_for(0, block_count, 1, [&](int64_t block_begin, int64_t block_end) {
      std::vector<acc> mask(kChannelBlock);
      std::vector<uint16_t> draws;
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t d0 = block * kChannelBlock;
        const int64_t width = std::min(kChannelBlock, dim - d0);
        for (int64_t row = 0; row < batch * seq_len; ++row) {
          const int64_t t = row / batch;
          const int64_t b = row % batch;
          const int64_t position = cpu::position_at(shape, params.positions, params.offset, b, t);
          const scalar_t* grad = static_cast<const scalar_t*>(params.x.data) +
                                 cpu::batch_offset(shape, params.x.batch_strides, b) +
                                 t * params.x.seq_stride + d0 * params.x.dim_stride;
          if (params.dropout.active) {
            const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim + d0);
            cpu::fill_dropout_multipliers(params.dropout, first, width, draws, mask.data());
          }
          const scalar_t* x = nullptr;
          if (multiply) {
            x = static_cast<const scalar_t*>(input.data) +
                cpu::batch_offset(shape, input.batch_strides, b) + t * input.seq_stride +
                d0 * input.dim_stride;
          }
          acc* out = table_grad + position * dim + d0;
          for (int64_t k = 0; k < width; ++k) {
            acc g = load_as_acc(grad + k * params.x.dim_stride);
            if (params.dropout.active) g *= mask[k];
            if (multiply) g *= scale * load_as_acc(x + k * input.dim_stride);
            out[k] += g;
          }
        }
      }
    });
  });
}

}  // namespace kernels
}  // namespace posenc
