"""The inference-only forward pass of a DefiNet stage (no autograd).

The same equations as :meth:`DefiNetLayer.forward <ase_definet.model.definet.DefiNetLayer>`
(the reference, still used whenever gradients are on), arranged for speed:

* weights that act on the same input are concatenated into one matrix (the two radial
  maps of message passing and coordinate updating, ``V`` and ``U``, the first layers of
  ``phi_s``, ``phi_g`` and ``phi_h``, ``ax_a`` and ``ax_b``), and the first layer of
  ``dist_phi`` is split so that the global half runs once per graph, not once per node;
  the fused matrices are kept on the layer and rebuilt when a parameter changes;
* the edge geometry and radial basis are computed once per layer and feed both message
  passing and the coordinate update (both use the geometry of layer t); the radial maps'
  biases ride in the matrix product (a column of ones on the basis);
* edges are processed in chunks of CHUNK through buffers reused by every layer of the
  stage: fresh large tensors cost page faults on every layer, and small chunks stay in
  cache;
* the edge indices that do not change between layers (gather rows, receivers, per-graph
  counts) are computed once per stage;
* the first layer of a stage skips the vector work on node vectors that are exactly zero
  there (the same numbers: 0 times anything finite is 0);
* intermediate tensors are updated in place.

Results agree with the reference to float rounding (about 1e-6 Å in float32 on the
shipped weights; ``tests/test_fast_forward.py`` holds it to 1e-5 Å).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as tf

from ..graph import N_MARKERS, GraphBatch
from .layers import ConsensusActivation, GaussianRBF, VectorLayerNorm
from .scatter import edge_slices, scatter_sum

CHUNK = 512  # edges per chunk on the CPU: ~1.5 MB of edge buffers at F=128, in L2


@dataclass
class EdgeContext:
    """Index work shared by every layer of a stage.

    Attributes:
        src, dst: (E,) sender j and receiver i.
        rows: (E,) rows ``j * 3 + m_i`` of the per-sender marker tables.
        markers, batch: (N,) node markers and graph index.
        counts: (B, 1) float node count per graph (at least 1), for means.
    """

    src: torch.Tensor
    dst: torch.Tensor
    rows: torch.Tensor
    shifts: torch.Tensor
    markers: torch.Tensor
    batch: torch.Tensor
    counts: torch.Tensor
    num_graphs: int

    @classmethod
    def of(cls, g: GraphBatch, dtype: torch.dtype) -> EdgeContext:
        src, dst = g.edge_index
        rows = src * N_MARKERS + g.markers.index_select(0, dst)
        counts = torch.bincount(g.batch, minlength=g.num_graphs).clamp_(min=1).to(dtype)
        return cls(src.contiguous(), dst.contiguous(), rows, g.shifts, g.markers, g.batch,
                   counts[:, None], g.num_graphs)

    def mean(self, v: torch.Tensor) -> torch.Tensor:
        """Per-graph mean of node rows: (N, ...) -> (B, ...)."""
        total = scatter_sum(v, self.batch, self.num_graphs)
        return total / self.counts.view(-1, *([1] * (v.dim() - 1)))

    def per_node(self, t: torch.Tensor) -> torch.Tensor:
        """Per-graph rows to nodes: (B, ...) -> (N, ...)."""
        if self.num_graphs == 1:
            return t.expand(self.batch.numel(), *t.shape[1:])
        return t.index_select(0, self.batch)


class Workspace:
    """Edge buffers reused by every layer of a stage: fresh large tensors cost page
    faults on every layer, and chunks of CHUNK edges keep the edge work in cache."""

    def __init__(self, n_edges: int, F: int, like: torch.Tensor, chunk: int):
        self.n_edges, self.chunk = n_edges, chunk
        e = min(chunk, n_edges)
        new = like.new_empty
        self.r, self.m, self.v = new(e, 3 * F), new(e, 3 * F), new(e, 3, F)
        self.h, self.c = new(e, F), new(e, F)

    def chunks(self):
        """(slice, buffers of its length) for every chunk of edges."""
        for sl in edge_slices(self.n_edges, self.chunk):
            k = sl.stop - sl.start
            yield sl, self if k == self.chunk else _Sliced(self, k)


class _Sliced:
    def __init__(self, ws: Workspace, k: int):
        self.r, self.m, self.v, self.h, self.c = ws.r[:k], ws.m[:k], ws.v[:k], ws.h[:k], ws.c[:k]


def _fused(layer) -> dict[str, torch.Tensor]:
    """Concatenated and split weights of one layer, cached on it while the parameters
    they are made of are unchanged (same tensors, same version counter). The key reads
    just those parameters: walking the module tree took ~5 % of an 8x8 forward pass."""
    sources = [layer.dist_phi[0], layer.msg_rbf, layer.coord_rbf, layer.V, layer.U,
               layer.phi_s[0], layer.phi_g[0], layer.phi_h[0]]
    if layer.axial and layer.aggregate:
        sources += [layer.ax_a, layer.ax_b]
    params = [p for m in sources for p in (m.weight, m.bias) if p is not None]
    compiling = torch.compiler.is_compiling()
    if not compiling:
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        cached = layer.__dict__.get("_definet_fused")
        if cached is not None and cached[0] == key:
            return cached[1]
    F = layer.V.weight.shape[0]
    d1 = layer.dist_phi[0]
    w = {
        "dist1_x": d1.weight[:, :F].contiguous(),
        "dist1_g": d1.weight[:, F:].contiguous(),
        # (4F, n_rbf + 1): message | coordinate radial maps, the bias as a last column
        # (the basis gets a column of ones), so no bias pass over the (E, 4F) output
        "rbf_w": torch.cat([torch.cat([layer.msg_rbf.weight, layer.coord_rbf.weight]),
                            torch.cat([layer.msg_rbf.bias, layer.coord_rbf.bias])[:, None]],
                           dim=1),
        "vu_w": torch.cat([layer.V.weight, layer.U.weight]),
        "phi1_w": torch.cat([layer.phi_s[0].weight, layer.phi_g[0].weight,
                             layer.phi_h[0].weight]),
        "phi1_b": torch.cat([layer.phi_s[0].bias, layer.phi_g[0].bias, layer.phi_h[0].bias]),
    }
    if layer.axial and layer.aggregate:
        w["ab_w"] = torch.cat([layer.ax_a.weight, layer.ax_b.weight])
    if not compiling:
        layer.__dict__["_definet_fused"] = (key, w)  # not a parameter, not in state_dict
    return w


def _consensus(v: torch.Tensor, act: ConsensusActivation) -> torch.Tensor:
    """:class:`ConsensusActivation` on (n, 3, F), with fewer temporaries."""
    c = tf.linear(v, act.consensus.weight)  # (n, 3, 1)
    y = tf.linear(v, act.mix.weight)  # (n, 3, F)
    dot = (c * y).sum(dim=1, keepdim=True)
    if act.tau <= 0:
        return torch.where(dot > 0, y, y + c)
    norm = ((c * c).sum(dim=1, keepdim=True) * (y * y).sum(dim=1, keepdim=True)
            + 1e-18).sqrt_()
    return y.addcmul_(c, torch.sigmoid_(dot.neg_().div_(norm.mul_(act.tau))))


def _vnorm(v: torch.Tensor, norm: VectorLayerNorm) -> torch.Tensor:
    rms = torch.sqrt((v * v).sum(dim=1).mean(dim=-1, keepdim=True) + norm.eps)
    return v * (norm.gain / rms)[:, None, :]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over axis 1 of (n, 3, F) tensors (``torch.linalg.cross`` is slow
    there on the CPU)."""
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=1)


def _basis(rbf: GaussianRBF, d: torch.Tensor) -> torch.Tensor:
    """``cat([rbf(d), 1])``: (E,) Å -> (E, n_rbf + 1), the same numbers as
    :class:`GaussianRBF` (the same operations in place, and its mask as a product with
    ``sign(arg + 80)``, exact since ``arg >= -80`` after the clamp: comparisons and
    ``where`` on (E, n_rbf) took most of the basis's time on the CPU)."""
    k = rbf.centers.numel()
    arg = (d[:, None] - rbf.centers).div_(rbf.width).pow_(2).mul_(-0.5).clamp_(min=-80.0)
    values = torch.exp(arg).mul_(arg.add_(80.0).sign_())
    env = torch.cos(d * (math.pi / rbf.cutoff)).add_(1.0).mul_(0.5).mul_(d < rbf.cutoff)
    out = d.new_empty(d.shape[0], k + 1)
    out[:, k] = 1.0
    torch.mul(values, env[:, None], out=out[:, :k])
    return out


def _tables(phi: torch.Tensor, gate: torch.Tensor, markers: torch.Tensor) -> torch.Tensor:
    """Per-sender tables phi(x_j) * gate(E(m_i) + E(m_j)) over the receiver marker m_i:
    phi (n, C), gate (3, 3, C) indexed [m_i, m_j] -> (3n, C), row j * 3 + m_i."""
    g = gate.transpose(0, 1).contiguous().index_select(0, markers)  # (n, 3, C)
    return g.mul_(phi[:, None, :]).view(-1, phi.shape[1])


def layer_forward(layer, x: torch.Tensor, vec: torch.Tensor | None, pos: torch.Tensor,
                  xg: torch.Tensor, vg: torch.Tensor | None, pair_emb: torch.Tensor,
                  ctx: EdgeContext, rbf, ws: Workspace, axg: torch.Tensor | None
                  ) -> tuple[torch.Tensor, ...]:
    """One :class:`DefiNetLayer` without autograd. ``vec``, ``vg`` and ``axg`` may be
    ``None``, meaning exactly zero (the first layer of a stage). Shapes as in
    ``DefiNetLayer.forward``."""
    w = _fused(layer)
    n, F = x.shape
    src, dst, rows = ctx.src, ctx.dst, ctx.rows

    # --- message distribution from the global node (8, 9)
    h = tf.linear(x, w["dist1_x"]).add_(ctx.per_node(
        tf.linear(xg, w["dist1_g"], layer.dist_phi[0].bias)))
    x = tf.linear(tf.silu(h, inplace=True), layer.dist_phi[2].weight,
                  layer.dist_phi[2].bias).add_(x)
    if vec is not None:
        v = vec + ctx.per_node(vg) if vg is not None else vec
        vec = _consensus(tf.linear(v, layer.dist_W.weight).add_(vec), layer.dist_act)
        if layer.axial and axg is not None:  # polar x axial = polar
            vec = vec + _cross(tf.linear(_vnorm(vec, layer.ax_norm_in), layer.ax_c.weight),
                               ctx.per_node(axg))
    xn = layer.norm_x(x)
    vn = _vnorm(vec, layer.norm_vec) if vec is not None else None

    # --- edge geometry at r^(t); its radial basis feeds both edge passes
    e = pos.index_select(0, src).add_(ctx.shifts).sub_(pos.index_select(0, dst))
    d = torch.linalg.vector_norm(e, dim=1)
    u = e.div_(d.clamp(min=1e-9)[:, None])
    basis = _basis(rbf, d)  # (E, n_rbf + 1)
    table = _tables(layer.msg_phi(xn), layer.msg_gate(pair_emb), ctx.markers)  # (3n, 3F)

    # --- defect-aware message passing (1, 2), in chunks that stay in cache
    q = x.new_zeros(n, F)
    qv = x.new_zeros(n, 3, F)
    for sl, buf in ws.chunks():
        js, is_, us = src[sl], dst[sl], u[sl, :, None]
        r = torch.mm(basis[sl], w["rbf_w"][:3 * F].t(), out=buf.r)
        m = torch.index_select(table, 0, rows[sl], out=buf.m)
        mh = torch.mul(m[:, :F], r[:, :F], out=buf.h)  # contiguous for the scatter
        muv = m[:, F:].mul_(r[:, F:])
        mu, mv = muv[:, :F], muv[:, F:]
        q = scatter_sum(mh, is_, n, out=q)
        if vn is None:  # zero node vectors: only the direction channel
            vm = torch.mul(us, mv[:, None, :], out=buf.v)
        else:
            vm = torch.index_select(vn, 0, js, out=buf.v)
            vm.mul_(mu[:, None, :]).addcmul_(us, mv[:, None, :])
        qv = scatter_sum(vm, is_, n, out=qv)

    # --- self-updating (3, 4)
    vu = tf.linear(qv, w["vu_w"])  # (n, 3, 2F): V qv | U qv
    vq, uq = vu.split(F, dim=2)
    a = torch.cat([q, torch.sqrt((vq * vq).sum(dim=1) + 1e-8)], dim=1)
    p = tf.silu(tf.linear(a, w["phi1_w"], w["phi1_b"]), inplace=True)
    ps, pg, ph = p.split(F, dim=1)
    x_new = tf.linear(ps, layer.phi_s[2].weight, layer.phi_s[2].bias).addcmul_(
        torch.tanh_(tf.linear(pg, layer.phi_g[2].weight, layer.phi_g[2].bias)), q)
    hh = tf.linear(ph, layer.phi_h[2].weight, layer.phi_h[2].bias)
    vec_new = _consensus(uq * hh[:, None, :], layer.upd_act)

    # --- defect-aware coordinate updating (5, 6, 7), geometry of layer t
    ctable = _tables(layer.coord_phi(layer.norm_coord(x_new)), layer.coord_gate(pair_emb),
                     ctx.markers)  # (3n, F)
    disp = tf.linear(vec_new, layer.W_vec.weight).squeeze(-1)  # Vec2Disp (6): (n, 3)
    q1, q2 = layer.coord_q[0], layer.coord_q[2]
    for sl, buf in ws.chunks():
        r = torch.mm(basis[sl], w["rbf_w"][3 * F:].t(), out=buf.h)
        c = torch.index_select(ctable, 0, rows[sl], out=buf.c).mul_(r)
        hq = tf.silu(torch.addmm(q1.bias, c, q1.weight.t(), out=buf.h), inplace=True)
        wq = tf.linear(hq, q2.weight, q2.bias)  # (e, 1)
        disp = scatter_sum(u[sl].mul_(wq), dst[sl], n, out=disp)  # RPV2Disp (5); u done here
    pos = pos + disp

    # --- message aggregation into the global node (10, 11)
    if not layer.aggregate:
        return x_new, vec_new, pos, xg, vg, axg
    xg = layer.agg_phi(torch.cat([ctx.mean(x_new), xg], dim=1)) + xg
    mv_ = ctx.mean(vec_new)
    vg = layer.agg_act(layer.agg_W(mv_ if vg is None else mv_ + vg)
                       + (0 if vg is None else vg))
    if layer.axial:  # polar x polar = axial
        ab = tf.linear(_vnorm(vec_new, layer.ax_norm_out), w["ab_w"])
        cross = _cross(*ab.split(F, dim=2))
        out = tf.linear(ctx.mean(cross), layer.ax_out.weight)
        axg = out if axg is None else axg + out
    return x_new, vec_new, pos, xg, vg, axg


def stage_forward(model, g: GraphBatch) -> list[torch.Tensor]:
    """``DefiNet._stage`` without autograd: ``[r^(0), ..., r^(T)]``, each (N, 3) Å."""
    pos = g.positions
    x = model.element_embedding(model.element_index(g.numbers))
    F = x.shape[1]
    ctx = EdgeContext.of(g, x.dtype)
    xg = model.global_scalar.to(x.dtype).expand(g.num_graphs, F)
    e = model.marker_embedding.weight
    pair_emb = e[:, None, :] + e[None, :, :]  # (3, 3, F): E(m_i) + E(m_j)
    out = [pos]
    chunk = max(int(model.config.edge_chunk), 1)
    if x.device.type == "cpu":  # on a GPU, small chunks would only add kernel launches
        chunk = min(chunk, CHUNK)
    ws = Workspace(ctx.src.numel(), F, x, chunk)
    vec = vg = axg = None  # exactly zero before the first layer
    for layer in model.layers:
        x, vec, pos, xg, vg, axg = layer_forward(layer, x, vec, pos, xg, vg, pair_emb, ctx,
                                                 model.rbf, ws, axg)
        out.append(pos)
    return out
