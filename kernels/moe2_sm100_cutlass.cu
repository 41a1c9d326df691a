/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_sm100_cutlass.cu — the block-scaled NVFP4 grouped GEMM of the
 * sm_100a path (moe2_sm100_cutlass.h), from CUTLASS 4.2's pointer-array
 * kernel for Blackwell (the configuration of its example 75: 1-SM tcgen05
 * MMA, 128 x 256 x 256 tiles, TMA, native 128x4 scale factors). The only
 * translation unit that includes CUTLASS: one kernel instantiation, built
 * with EPMOE_CUTLASS=ON for compute_100a / sm_100a only (about 70 s and 5 GB
 * of compiler memory), headers from the pinned nvidia-cutlass wheel
 * (cmake/epmoe_deps.cmake). Everything CUTLASS needs per group (pointers,
 * strides, scale-factor layouts, the per-expert alpha) is filled by a small
 * kernel from the device-side counts, so nothing is read back and the launch
 * can be captured; the output is fp32 so the SwiGLU and the bf16 rounding of
 * y happen exactly where the v1 kernels do them (moe2_sm100.cu). */
#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "epmoe/cuda_status.h"
#include "moe2_core.h"
#include "moe2_sm100_cutlass.h"

#if !defined(CUTLASS_ARCH_MMA_SM100_SUPPORTED)
#error "moe2_sm100_cutlass.cu is built for sm_100a only (CUTLASS_ARCH_MMA_SM100_SUPPORTED)"
#endif

/* A named namespace: nvcc's host stub of a kernel in an unnamed namespace
 * turns ambiguous next to CUTLASS's headers. */
namespace epm_sm100 {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using ElementA = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
using ElementB = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
using LayoutA = cutlass::layout::RowMajor;    /* tokens [M, K], K contiguous */
using LayoutB = cutlass::layout::ColumnMajor; /* weights [N, K], K contiguous */
constexpr int AlignmentA = 32;
constexpr int AlignmentB = 32;
using ElementC = void; /* no source: D = alpha * acc */
using ElementD = float;
using LayoutD = cutlass::layout::RowMajor;
constexpr int AlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;
using ElementAccumulator = float;

using ArchTag = cutlass::arch::Sm100;
using OperatorClass = cutlass::arch::OpClassBlockScaledTensorOp;
using MmaTileShape = Shape<_128, _256, _256>;
using ClusterShape = Shape<_1, _1, _1>;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    ArchTag, OperatorClass, MmaTileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto,
    ElementAccumulator, ElementAccumulator, ElementC, LayoutD *, AlignmentD, ElementD, LayoutD *, AlignmentD,
    cutlass::epilogue::PtrArrayTmaWarpSpecialized1Sm>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    ArchTag, OperatorClass, ElementA, LayoutA *, AlignmentA, ElementB, LayoutB *, AlignmentB, ElementAccumulator,
    MmaTileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecialized1SmNvf4Sm100>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using StrideA = typename Gemm::GemmKernel::InternalStrideA;
using StrideB = typename Gemm::GemmKernel::InternalStrideB;
using StrideD = typename Gemm::GemmKernel::InternalStrideD;
using LayoutSFA = typename Gemm::GemmKernel::CollectiveMainloop::InternalLayoutSFA;
using LayoutSFB = typename Gemm::GemmKernel::CollectiveMainloop::InternalLayoutSFB;
using BlkScaledConfig = typename Gemm::GemmKernel::CollectiveMainloop::Sm1xxBlkScaledConfig;
using Shape3 = typename ProblemShape::UnderlyingProblemShape;
using EA = typename Gemm::ElementA;
using EB = typename Gemm::ElementB;
using ESF = typename Gemm::GemmKernel::ElementSF;

/* One group's arrays, each slot 16-byte aligned. */
constexpr size_t slot(size_t b) { return (b + 15) / 16 * 16; }
constexpr size_t kPerGroup = slot(sizeof(Shape3)) + 5 * slot(sizeof(void *)) + slot(sizeof(StrideA)) +
                             slot(sizeof(StrideB)) + slot(sizeof(StrideD)) + slot(sizeof(LayoutSFA)) +
                             slot(sizeof(LayoutSFB)) + slot(sizeof(float)) + slot(sizeof(float *));
static_assert(kPerGroup <= EPM_MOE2_SM100_GROUP_BYTES, "CUTLASS group arguments exceed the planned scratch");

struct Arrays {
  Shape3 *shape;
  const EA **pa;
  const EB **pb;
  const ESF **psfa, **psfb;
  ElementD **pd;
  StrideA *sa;
  StrideB *sb;
  StrideD *sd;
  LayoutSFA *lsfa;
  LayoutSFB *lsfb;
  float *alpha;
  float **palpha;
};

template <class T>
T *take(uint8_t *&p, int64_t groups) {
  T *r = reinterpret_cast<T *>(p);
  p += (sizeof(T) * (size_t)groups + 255) / 256 * 256;
  return r;
}

Arrays carve(uint8_t *base, int64_t groups, uint8_t **end) {
  Arrays a;
  uint8_t *p = base;
  a.shape = take<Shape3>(p, groups);
  a.pa = take<const EA *>(p, groups);
  a.pb = take<const EB *>(p, groups);
  a.psfa = take<const ESF *>(p, groups);
  a.psfb = take<const ESF *>(p, groups);
  a.pd = take<ElementD *>(p, groups);
  a.sa = take<StrideA>(p, groups);
  a.sb = take<StrideB>(p, groups);
  a.sd = take<StrideD>(p, groups);
  a.lsfa = take<LayoutSFA>(p, groups);
  a.lsfb = take<LayoutSFB>(p, groups);
  a.alpha = take<float>(p, groups);
  a.palpha = take<float *>(p, groups);
  *end = p;
  return a;
}

__global__ void fill_args(Arrays a, epm_sm100_gemm_t g) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= g.groups) return;
  const int m = g.counts[e], n = (int)g.n, k = (int)g.k;
  const int64_t row0 = g.row_offsets[e];
  a.shape[e] = Shape3(m, n, k);
  a.pa[e] = reinterpret_cast<const EA *>(g.a + row0 * (g.k / 2));
  a.psfa[e] = reinterpret_cast<const ESF *>(g.a_sf + row0 * epm_core_round_up(g.k / 16, 4));
  a.pb[e] = reinterpret_cast<const EB *>(g.b + e * g.b_expert_bytes);
  a.psfb[e] = reinterpret_cast<const ESF *>(g.b + e * g.b_expert_bytes + g.b_sf_offset);
  a.pd[e] = g.d + row0 * g.n;
  a.sa[e] = cutlass::make_cute_packed_stride(StrideA{}, {m, k, 1});
  a.sb[e] = cutlass::make_cute_packed_stride(StrideB{}, {n, k, 1});
  a.sd[e] = cutlass::make_cute_packed_stride(StrideD{}, {m, n, 1});
  a.lsfa[e] = BlkScaledConfig::tile_atom_to_shape_SFA(make_shape(m, n, k, 1));
  a.lsfb[e] = BlkScaledConfig::tile_atom_to_shape_SFB(make_shape(m, n, k, 1));
  a.alpha[e] = g.alpha0 * g.scale2[e]; /* the v1 epilogue's alpha, rounded the same way */
  a.palpha[e] = &a.alpha[e];
}

epm_status_t cutlass_status(cutlass::Status s, const char *what) {
  if (s == cutlass::Status::kSuccess) return EPM_OK;
  return epm_error(EPM_ERR_CUDA, "CUTLASS %s: %s", what, cutlass::cutlassGetStatusString(s));
}

} // namespace epm_sm100

extern "C" epm_status_t epm__sm100_nvfp4_grouped(const epm_sm100_gemm_t *g, void *stream) {
  using namespace epm_sm100;
  if (!g || g->groups < 1 || g->groups > INT32_MAX)
    return epm_error(EPM_ERR_INVALID_ARG, "sm_100a grouped GEMM: bad argument block");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  uint8_t *end = nullptr;
  const Arrays a = carve(g->scratch, g->groups, &end);
  const size_t used = (size_t)(end - g->scratch);
  fill_args<<<(unsigned)((g->groups + 127) / 128), 128, 0, s>>>(a, *g);
  EPM_CUDA_TRY(cudaGetLastError());

  typename Gemm::Arguments args;
  decltype(args.epilogue.thread) fusion;
  fusion.alpha = 0.0f;
  fusion.beta = 0.0f;
  fusion.alpha_ptr = nullptr;
  fusion.beta_ptr = nullptr;
  fusion.alpha_ptr_array = a.palpha;
  fusion.beta_ptr_array = nullptr;
  fusion.dAlpha = {_0{}, _0{}, 1}; /* one alpha per group */
  fusion.dBeta = {_0{}, _0{}, 0};
  cutlass::KernelHardwareInfo hw;
  hw.device_id = g->device;
  hw.sm_count = g->sm_count;
  args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                  {(int)g->groups, a.shape, nullptr},
                                  {a.pa, a.sa, a.pb, a.sb, a.psfa, a.lsfa, a.psfb, a.lsfb},
                                  {fusion, nullptr, nullptr, a.pd, a.sd},
                                  hw};
  Gemm gemm;
  const size_t ws = Gemm::get_workspace_size(args);
  const size_t ws_off = (used + 255) / 256 * 256;
  if (ws_off + ws > g->scratch_bytes)
    return epm_error(EPM_ERR_INTERNAL, "sm_100a grouped GEMM: CUTLASS needs %zu + %zu bytes of scratch, plan gave %zu",
                     ws_off, ws, g->scratch_bytes);
  EPM_TRY(cutlass_status(gemm.can_implement(args), "can_implement"));
  EPM_TRY(cutlass_status(gemm.initialize(args, g->scratch + ws_off, s), "initialize"));
  EPM_TRY(cutlass_status(gemm.run(s), "run"));
  EPM_CUDA_TRY(cudaGetLastError());
  return EPM_OK;
}
