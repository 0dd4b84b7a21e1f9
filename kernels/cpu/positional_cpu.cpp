#include <algorithm>
#include <vector>

#include "positional.h"
#include "row_kernels.h"

namespace posenc {
namespace kernels {

void add_positional_cpu(const AddPositionalParams& params, const ParallelFor& parallel_for) {
  const RowShape& shape = params.shape;
  const int64_t batch = shape.batch_count();
  const int64_t seq_len = shape.seq_len;
  const int64_t dim = shape.dim;
  if (batch == 0 || seq_len == 0 || dim == 0) return;
  const bool needs_code = params.combine != Combine::kScaleOnly;

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc scale = static_cast<acc>(params.scale);
    // Rows in t-major order: consecutive rows of a chunk share t, so the PE row is reused
    // across the batch whenever positions do not depend on the batch index.
    parallel_for(0, batch * seq_len, cpu::row_grain(dim), [&](int64_t begin, int64_t end) {
      cpu::PositionRowCache<scalar_t> code(params.source, dim);
      std::vector<acc> mask(params.dropout.active ? static_cast<size_t>(dim) : 0);
      std::vector<uint32_t> draws;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t t = row / batch;
        const int64_t b = row % batch;
        const acc* pe = nullptr;
        if (needs_code) {
          pe = code.get(cpu::position_at(shape, params.positions, params.offset, b, t));
        }
        if (params.dropout.active) {
          const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim);
          cpu::fill_dropout_multipliers(params.dropout, first, dim, draws, mask.data());
        }
        const scalar_t* in = static_cast<const scalar_t*>(params.x.data);
        if (in != nullptr) {
          in += cpu::batch_offset(shape, params.x.batch_strides, b) + t * params.x.seq_stride;
        }
        scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(params.out.data)) +
                        cpu::batch_offset(shape, params.out.batch_strides, b) +
                        t * params.out.seq_stride;
        cpu::combine_row(params.combine, in, params.x.dim_stride, pe,
                         params.dropout.active ? mask.data() : nullptr, scale, out,
                         params.out.dim_stride, dim);
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
      std::vector<uint32_t> draws;
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
