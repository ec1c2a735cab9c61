//! The prefill routing table (`wgsl/moe_route_sort.wgsl`): the `(token, slot)` pairs of a batch
//! of expert ids grouped by expert on the GPU (counts, offsets, a stable permutation, its
//! inverse and the tile list of the grouped GEMM), with no host readback. See [`RouteLayout`].

use super::moe_router::{MAX_EXPERTS, check_len, moe_err};
use crate::gpu::{
    Access, DType, GpuError, GpuTensor, KernelSpec, ParamLayout, Recorder, uniform_params,
};

uniform_params! {
    /// Parameters of `moe_route_sort.wgsl`.
    struct Params {
        n: u32,
        e: u32,
        ids_off: u32,
        route_off: u32,
        perm_off: u32,
        inv_off: u32,
        _p0: u32,
        _p1: u32,
    }
}

/// The Rust layout of the kernel's uniform parameters (for the kernel-layout test).
#[doc(hidden)]
pub fn param_layout() -> ParamLayout {
    Params::layout()
}

/// Pairs per grouped-GEMM tile (must match `TILE` in `moe_route_sort.wgsl` and `T` in
/// `moe_matmul.wgsl`).
pub const ROUTE_TILE: usize = 32;

/// The layout of the u32 routing table of `tokens * top_k` pairs over `experts` experts:
/// `offsets [experts + 1]` (expert `e`'s pairs are sorted positions `offsets[e] ..
/// offsets[e + 1]`), `ntiles`, `tiles [max_tiles, 2]` (first sorted position, expert), `perm
/// [pairs]` (the slot `t * top_k + j` at each sorted position, stable within an expert) and
/// `inv [pairs]` (the sorted position of each slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLayout {
    /// Experts.
    pub experts: usize,
    /// Pairs (`tokens * top_k`).
    pub pairs: usize,
    /// An upper bound of the tiles: `ceil(pairs / 32) + min(experts, pairs)`.
    pub max_tiles: usize,
    /// Offset of `perm` in the table.
    pub perm_off: usize,
    /// Offset of `inv` in the table.
    pub inv_off: usize,
    /// u32 elements of the whole table.
    pub len: usize,
}

impl RouteLayout {
    /// The layout for `tokens` tokens routed to `top_k` of `experts` experts each.
    pub fn new(tokens: usize, experts: usize, top_k: usize) -> Self {
        let pairs = tokens * top_k;
        let max_tiles = pairs.div_ceil(ROUTE_TILE) + experts.min(pairs);
        let perm_off = experts + 2 + 2 * max_tiles;
        let inv_off = perm_off + pairs;
        RouteLayout {
            experts,
            pairs,
            max_tiles,
            perm_off,
            inv_off,
            len: inv_off + pairs,
        }
    }
}

/// The routing-table specialisation (no subgroups: one kernel for both paths).
pub fn route_sort_spec() -> KernelSpec {
    KernelSpec::new("moe_route_sort", "main", &[Access::Read, Access::ReadWrite])
}

/// All specialisations (for shader validation).
pub fn all_specs() -> Vec<KernelSpec> {
    vec![route_sort_spec()]
}

/// Records the routing table of `ids` (u32 `[tokens, top_k]`, at any element offset) into
/// `route` (u32, exactly `RouteLayout::new(tokens, experts, top_k).len` elements): one dispatch
/// of one workgroup. Ids `>= experts` are left out (their `inv` is `0xffffffff`).
pub fn route_sort(
    rec: &mut Recorder,
    ids: &GpuTensor,
    route: &GpuTensor,
    layout: &RouteLayout,
) -> Result<(), GpuError> {
    const K: &str = "moe_route_sort";
    if layout.experts == 0 || layout.experts > MAX_EXPERTS {
        return Err(moe_err(
            K,
            format!("{} experts: need 1 to {MAX_EXPERTS}", layout.experts),
        ));
    }
    check_len(K, "ids", ids, layout.pairs, DType::U32)?;
    check_len(K, "route", route, layout.len, DType::U32)?;
    if ids.buffer == route.buffer {
        return Err(moe_err(K, "ids and route share a buffer".into()));
    }
    let kernel = rec.ctx().kernel(&route_sort_spec())?;
    let params = Params {
        n: layout.pairs as u32,
        e: layout.experts as u32,
        ids_off: ids.elem_offset(),
        route_off: route.elem_offset(),
        perm_off: layout.perm_off as u32,
        inv_off: layout.inv_off as u32,
        _p0: 0,
        _p1: 0,
    };
    let bufs = [(&ids.buffer).into(), (&route.buffer).into()];
    rec.dispatch(&kernel, &params, &bufs, [1, 1, 1])
}
