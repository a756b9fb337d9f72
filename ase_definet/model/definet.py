"""DefiNet (Yang et al., npj Comput. Mater. 2025): one forward pass from an unrelaxed
defect structure to relaxed Cartesian coordinates.

Tensors in, tensors out: no ASE here. Equation numbers refer to the paper's Methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..graph import N_MARKERS, VACANCY, GraphBatch
from .inference import stage_forward
from .layers import MLP, ConsensusActivation, GaussianRBF, VectorLayerNorm, vector_norm
from .scatter import edge_slices, scatter_mean, scatter_sum


@dataclass
class DefiNetConfig:
    """Hyperparameters of a DefiNet; saved with every checkpoint.

    Attributes:
        hidden: feature width F (paper: 512).
        layers: number of graph-convolution layers T (paper: 4).
        n_rbf: number of Gaussian radial basis functions.
        cutoff: neighbour cutoff D, Å (paper code: 6).
        max_neighbors: neighbour cap N per node (paper code: 50).
        elements: atomic numbers the element embedding knows.
        tau: temperature of the smooth consensus activation (0: the paper's hard rule).
        edge_chunk: edges processed per chunk (bounds the working set on large cells).
        displacement_init: scale of the initial weights of the two displacement heads
            (RPV2Disp's last layer and W_Vec). Relaxation displacements are small
            (~0.01-0.5 Å), so an untrained model should start close to the identity.
        axial_global: an extension beyond the paper (off by default): the global node
            also carries *axial* vectors, the mean of channel-wise cross products of node
            vectors, and hands them back as cross products with node vectors. Polar
            vectors alone cannot express a displacement that is odd under a mirror of
            the structure, such as the two halves of an InSe layer sliding against each
            other in opposite directions; axial x polar can, and the network stays
            equivariant under rotations *and* reflections. Its output map starts at
            zero, so switching it on for a trained checkpoint changes nothing at first.
        refine: refinement stages after the first, another extension (0 = off). Each is
            a DefiNet of the same size that re-embeds the structure the previous stage
            predicted, on the same edges, and relaxes it once more. A one-shot prediction
            falls short on large, collective moves; a stage that starts close to the
            minimum sees the final neighbourhoods. ``definet finetune --add-stage``
            appends one, initialised as a copy of the last.
        refine_layers: layers of each refinement stage (``None``: ``layers``). A stage
            that starts close to the minimum needs fewer layers than the first; a
            one-layer refiner costs a quarter of a four-layer one. ``definet finetune
            --refine-layers K`` cuts a checkpoint's refiners to their first K layers.
        conserve_centroid: keep the centroid of the atoms (vacancy placeholders left
            out) where the input has it, by removing the mean displacement of each
            structure's atoms after every layer. A relaxation under forces that sum to
            zero (FIRE, VASP's optimisers, which remove the drift) moves no centroid; the
            network, left alone, predicts a small rigid drift, pure error
            (``benchmarks/centroid_drift.py``). The network is translation-equivariant,
            so removing it after every layer changes nothing but the drift.
    """

    hidden: int = 512
    layers: int = 4
    n_rbf: int = 32
    cutoff: float = 6.0
    max_neighbors: int | None = 50
    elements: list[int] = field(default_factory=lambda: list(range(1, 95)))
    tau: float = 0.05
    edge_chunk: int = 8192
    displacement_init: float = 0.01
    axial_global: bool = False
    refine: int = 0
    refine_layers: int | None = None
    conserve_centroid: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def refiner_layers(self) -> int:
        """Layers of each refinement stage (``refine_layers``, else ``layers``)."""
        return int(self.refine_layers or self.layers)

    def layer_summary(self) -> str:
        """The stages and their layers in words: "4 layers x 3 stages", or "4 layers +
        2 refinement stages of 1 layer"."""
        S, T, R = self.refine + 1, self.layers, self.refiner_layers
        if R == T:
            return f"{T} layers x {S} stage{'s' if S > 1 else ''}"
        return (f"{T} layers + {S - 1} refinement stage{'s' if S > 2 else ''} of {R} "
                f"layer{'s' if R > 1 else ''}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DefiNetConfig:
        known = cls.__dataclass_fields__
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown DefiNet hyperparameter(s): {sorted(unknown)}")
        return cls(**d)


def _edge_geometry(pos: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                   shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (e,) Å and unit vectors (e, 3) from receiver i to sender j."""
    vec = pos.index_select(0, src) + shifts - pos.index_select(0, dst)
    d = torch.linalg.vector_norm(vec, dim=1)
    return d, vec / d.clamp(min=1e-9)[:, None]


class DefiNetLayer(nn.Module):
    """One graph-convolution layer: distribution (8-9), defect-aware message passing
    (1-2), self-updating (3-4), defect-aware coordinate updating (5-7), aggregation
    (10-11), with the consensus activation (12-13) after every vector update.

    Messages are sums over ~20-50 neighbours, so without normalisation feature
    magnitudes grow by that factor per layer and training diverges (seen at lr 2e-3).
    As in the PaiNN/ViSNet family the paper builds on, the node features entering
    message passing and the scalars entering the coordinate update are layer-normalised
    (LayerNorm for scalars, an RMS norm for vectors); both are rotation-invariant /
    -equivariant."""

    def __init__(self, hidden: int, n_rbf: int, tau: float, aggregate: bool = True,
                 axial: bool = False):
        super().__init__()
        F = hidden
        self.aggregate = aggregate  # the last layer's global node would never be read
        self.axial = axial
        self.dist_phi = MLP(2 * F, F, F)
        self.dist_W = nn.Linear(F, F, bias=False)
        self.dist_act = ConsensusActivation(F, tau)
        self.norm_x = nn.LayerNorm(F)
        self.norm_vec = VectorLayerNorm(F)
        self.norm_coord = nn.LayerNorm(F)
        # message passing: three channels h (scalar), u (vector), v (direction)
        self.msg_phi = MLP(F, F, 3 * F)
        self.msg_rbf = nn.Linear(n_rbf, 3 * F)
        self.msg_gate = MLP(F, F, 3 * F)
        # self-updating
        self.V = nn.Linear(F, F, bias=False)
        self.U = nn.Linear(F, F, bias=False)
        self.phi_s = MLP(2 * F, F, F)
        self.phi_g = MLP(2 * F, F, F)
        self.phi_h = MLP(2 * F, F, F)
        self.upd_act = ConsensusActivation(F, tau)
        # coordinate updating
        self.coord_phi = MLP(F, F, F)
        self.coord_rbf = nn.Linear(n_rbf, F)
        self.coord_gate = MLP(F, F, F)
        self.coord_q = MLP(F, F, 1)
        self.W_vec = nn.Linear(F, 1, bias=False)
        # aggregation to the global node
        if aggregate:
            self.agg_phi = MLP(2 * F, F, F)
            self.agg_W = nn.Linear(F, F, bias=False)
            self.agg_act = ConsensusActivation(F, tau)
        # distribution of the axial global vectors; the first layer receives zeros, but
        # keeps these parameters so that every parameter takes part in every step (DDP)
        if axial:
            self.ax_norm_in = VectorLayerNorm(F)
            self.ax_c = nn.Linear(F, F, bias=False)
        if axial and aggregate:  # aggregation into them; the output map starts at zero
            self.ax_norm_out = VectorLayerNorm(F)
            self.ax_a = nn.Linear(F, F, bias=False)
            self.ax_b = nn.Linear(F, F, bias=False)
            self.ax_out = nn.Linear(F, F, bias=False)
            nn.init.zeros_(self.ax_out.weight)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pos: torch.Tensor, xg: torch.Tensor,
                vg: torch.Tensor, pair_emb: torch.Tensor, g: GraphBatch, rbf: GaussianRBF,
                chunk: int, axg: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Args: x (n, F); vec (n, 3, F); pos (n, 3) Å; xg (B, F); vg (B, 3, F);
        pair_emb (3, 3, F) marker-pair embeddings E(m_i) + E(m_j); axg (B, 3, F) axial
        global vectors (``axial_global`` only). Returns x, vec, pos, xg, vg, axg."""
        n, F = x.shape
        src, dst = g.edge_index
        b = g.batch
        # --- message distribution from the global node (8, 9)
        x = self.dist_phi(torch.cat([x, xg[b]], dim=1)) + x
        vec = self.dist_act(self.dist_W(vec + vg[b]) + vec)
        if self.axial:  # polar x axial = polar
            vec = vec + torch.linalg.cross(self.ax_c(self.ax_norm_in(vec)), axg[b], dim=1)
        xn, vn = self.norm_x(x), self.norm_vec(vec)

        # --- edge geometry at r^(t), shared by message passing and coordinate updating
        d, u = _edge_geometry(pos, src, dst, g.shifts)
        basis = rbf(d)  # (E, n_rbf)
        recv_marker = g.markers[dst]
        # per-sender tables over the receiver's marker: phi(x_j) * gamma(E(m_i) + E(m_j))
        # for the three possible m_i, so each edge needs one gather instead of two
        gate = self.msg_gate(pair_emb)  # (3, 3, 3F) indexed [m_i, m_j]
        table = (self.msg_phi(xn)[:, None, :] * gate.transpose(0, 1)[g.markers]
                 ).reshape(-1, 3 * F)
        inplace = not torch.is_grad_enabled()

        # --- defect-aware message passing (1, 2), edges in chunks
        q = x.new_zeros(n, F)
        qv = x.new_zeros(n, 3, F)
        for sl in edge_slices(src.numel(), chunk):
            js, is_ = src[sl], dst[sl]
            rows = js * N_MARKERS + recv_marker[sl]
            m = table.index_select(0, rows) * self.msg_rbf(basis[sl])
            mh, mu, mv = m.split(F, dim=1)
            q = scatter_sum(mh, is_, n, out=q)
            if inplace:  # same numbers, fewer temporaries
                vm = vn.index_select(0, js).mul_(mu[:, None, :])
                vm.addcmul_(u[sl, :, None], mv[:, None, :])
            else:
                vm = mu[:, None, :] * vn.index_select(0, js) + mv[:, None, :] * u[sl, :, None]
            qv = scatter_sum(vm, is_, n, out=qv)

        # --- self-updating (3, 4)
        a = torch.cat([q, vector_norm(self.V(qv))], dim=1)
        x_new = self.phi_s(a) + torch.tanh(self.phi_g(a)) * q
        vec_new = self.upd_act(self.phi_h(a)[:, None, :] * self.U(qv))

        # --- defect-aware coordinate updating (5, 6, 7), geometry of layer t
        cgate = self.coord_gate(pair_emb)  # (3, 3, F)
        ctable = (self.coord_phi(self.norm_coord(x_new))[:, None, :]
                  * cgate.transpose(0, 1)[g.markers]).reshape(-1, F)
        disp = self.W_vec(vec_new).squeeze(-1)  # Vec2Disp (6): (n, 3)
        for sl in edge_slices(src.numel(), chunk):
            js, is_ = src[sl], dst[sl]
            rows = js * N_MARKERS + recv_marker[sl]
            w = self.coord_q(ctable.index_select(0, rows) * self.coord_rbf(basis[sl]))  # (e, 1)
            disp = scatter_sum(w * u[sl], is_, n, out=disp)  # RPV2Disp (5)
        pos = pos + disp

        # --- message aggregation into the global node (10, 11)
        if not self.aggregate:
            return x_new, vec_new, pos, xg, vg, axg
        xg = self.agg_phi(torch.cat([scatter_mean(x_new, b, g.num_graphs), xg], dim=1)) + xg
        vg = self.agg_act(self.agg_W(scatter_mean(vec_new, b, g.num_graphs) + vg) + vg)
        if self.axial:  # polar x polar = axial
            vn2 = self.ax_norm_out(vec_new)
            cross = torch.linalg.cross(self.ax_a(vn2), self.ax_b(vn2), dim=1)
            axg = axg + self.ax_out(scatter_mean(cross, b, g.num_graphs))
        return x_new, vec_new, pos, xg, vg, axg


def remove_drift(layers: list[torch.Tensor], g: GraphBatch) -> list[torch.Tensor]:
    """Each of ``layers`` (each (N, 3) Å, ``layers[0]`` the input) moved rigidly, per
    graph, so that its atoms' mean displacement from ``layers[0]`` is zero. Vacancy
    placeholders (marker 2) are moved with their graph but do not count."""
    r0, n, L = layers[0], layers[0].shape[0], len(layers) - 1
    atoms = (g.markers != VACANCY).to(r0.dtype)[:, None]  # (N, 1)
    count = scatter_sum(atoms, g.batch, g.num_graphs).clamp_(min=1.0)  # (B, 1)
    later = torch.stack(layers[1:], dim=1)  # (N, L, 3)
    disp = ((later - r0[:, None]) * atoms[:, :, None]).reshape(n, 3 * L)
    drift = scatter_sum(disp, g.batch, g.num_graphs) / count  # (B, 3L)
    moved = later - drift.index_select(0, g.batch).view(n, L, 3)
    return [r0, *moved.unbind(1)]


class DefiNet(nn.Module):
    """The DefiNet network.

    ``DefiNet()`` builds the paper's architecture (F=512, T=4, D=6 Å, N=50) with random
    weights; any :class:`DefiNetConfig` field can be overridden by keyword::

        model = DefiNet(hidden=128, layers=4, max_neighbors=24)
        trajectory = model(batch)     # list of T+1 tensors (N, 3), Å
        relaxed = trajectory[-1]

    Node positions of vacancy placeholders are updated too but carry no meaning.
    """

    def __init__(self, config: DefiNetConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = DefiNetConfig(**{**(config.to_dict() if config else {}), **overrides})
        cfg.elements = sorted(int(z) for z in cfg.elements)
        self.config = cfg
        F = cfg.hidden
        lut = torch.full((119,), -1, dtype=torch.long)
        lut[torch.tensor(cfg.elements)] = torch.arange(len(cfg.elements))
        self.register_buffer("z_to_index", lut, persistent=False)
        self.element_embedding = nn.Embedding(len(cfg.elements), F)
        self.marker_embedding = nn.Embedding(N_MARKERS, F)
        self.global_scalar = nn.Parameter(torch.randn(F) / F**0.5)
        self.rbf = GaussianRBF(cfg.n_rbf, cfg.cutoff)
        self.layers = nn.ModuleList(DefiNetLayer(F, cfg.n_rbf, cfg.tau,
                                                 aggregate=t < cfg.layers - 1,
                                                 axial=cfg.axial_global)
                                    for t in range(cfg.layers))
        with torch.no_grad():
            for layer in self.layers:
                layer.W_vec.weight.mul_(cfg.displacement_init)
                layer.coord_q[-1].weight.mul_(cfg.displacement_init)
                layer.coord_q[-1].bias.zero_()
        if cfg.refine < 0:
            raise ValueError(f"refine must be >= 0, got {cfg.refine}")
        if cfg.refine_layers is not None and (isinstance(cfg.refine_layers, bool)
                                              or int(cfg.refine_layers) < 1):
            raise ValueError(f"refine_layers must be None or >= 1, got {cfg.refine_layers}")
        self.refiners = nn.ModuleList(
            DefiNet(cfg, refine=0, layers=self.refiner_layers, refine_layers=None)
            for _ in range(cfg.refine))

    @property
    def refiner_layers(self) -> int:
        """Layers of each refinement stage."""
        return self.config.refiner_layers

    def stage_ends(self, stages: int | None = None) -> list[int]:
        """Where each stage's prediction sits in the layer outputs ``[r^(0), ...]`` of
        :meth:`forward` with ``stages`` (default all): ``[T, T + R, T + 2R, ...]``, T
        the first stage's layers and R a refiner's."""
        n = self.config.refine + 1 if stages is None else max(min(int(stages),
                                                                   self.config.refine + 1), 1)
        return [self.config.layers + s * self.refiner_layers for s in range(n)]

    def blank_like(self, **changes: Any) -> DefiNet:
        """A freshly initialised DefiNet with this model's configuration, updated by
        ``changes`` (:class:`DefiNetConfig` fields), on this model's device and in its
        dtype. The weights are not copied."""
        unknown = set(changes) - set(DefiNetConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DefiNet hyperparameter(s): {sorted(unknown)}")
        p = next(self.parameters())
        return DefiNet(self.config, **changes).to(device=p.device, dtype=p.dtype)

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters of one stage: 0 is the first, 1.. the refiners (``-1`` the last)."""
        stage = range(self.config.refine + 1)[stage]
        if stage:
            return list(self.refiners[stage - 1].parameters())
        inner = {id(p) for p in self.refiners.parameters()}
        return [p for p in self.parameters() if id(p) not in inner]

    @property
    def elements(self) -> list[int]:
        return list(self.config.elements)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def max_neighbors(self) -> int | None:
        return self.config.max_neighbors

    def element_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to embedding rows; ``ValueError`` for unknown elements."""
        idx = self.z_to_index[numbers.clamp(0, 118)]
        if bool((idx < 0).any()):
            from ase.data import chemical_symbols

            bad = sorted({chemical_symbols[int(z)] for z in numbers[idx < 0].tolist()})
            raise ValueError(f"element(s) {bad} are not among those this model was "
                             f"trained on")
        return idx

    def forward(self, g: GraphBatch, stages: int | None = None) -> list[torch.Tensor]:
        """Relax a batch of defect graphs.

        Args:
            g: :class:`~ase_definet.graph.GraphBatch` with ``positions`` (N, 3) Å.
            stages: run only the first this many stages (default: all ``1 + refine``).

        Returns:
            Coordinates after every layer, ``[r^(0), ..., r^(T)]``, each (N, 3) Å;
            ``r^(T)`` is the prediction. With ``refine`` stages, each appends its
            layers (``refine_layers``), starting from the last prediction; see
            :meth:`stage_ends`. With ``conserve_centroid`` every ``r^(t)`` keeps the
            input's centroid of atoms (markers other than 2).
        """
        out = self._stage(g)
        for stage in self.refiners[:None if stages is None else max(stages - 1, 0)]:
            out += stage._stage(replace(g, positions=out[-1]))[1:]
        if self.config.conserve_centroid:
            out = remove_drift(out, g)
        return out

    def _stage(self, g: GraphBatch) -> list[torch.Tensor]:
        """The first stage's T layers from ``g.positions``: ``[r^(0), ..., r^(T)]``."""
        if not torch.is_grad_enabled():  # the same numbers, faster (model/inference.py)
            return stage_forward(self, g)
        pos = g.positions
        x = self.element_embedding(self.element_index(g.numbers))
        n, F = x.shape
        vec = x.new_zeros(n, 3, F)
        xg = self.global_scalar.to(x.dtype).expand(g.num_graphs, F)
        vg = x.new_zeros(g.num_graphs, 3, F)
        axg = x.new_zeros(g.num_graphs, 3, F) if self.config.axial_global else None
        e = self.marker_embedding.weight
        pair_emb = e[:, None, :] + e[None, :, :]  # (3, 3, F): E(m_i) + E(m_j)
        out = [pos]
        chunk = max(int(self.config.edge_chunk), 1)
        for layer in self.layers:
            x, vec, pos, xg, vg, axg = layer(x, vec, pos, xg, vg, pair_emb, g, self.rbf,
                                             chunk, axg)
            out.append(pos)
        return out

    def extend_elements(self, new: Sequence[int]) -> list[int]:
        """Add elements to the embedding (fine-tuning on new chemistry); existing rows are
        kept, new rows start at the mean of the existing ones. Returns those added."""
        added = sorted(set(int(z) for z in new) - set(self.config.elements))
        if not added:
            return []
        old = self.element_embedding.weight.data
        elements = sorted(self.config.elements + added)
        emb = nn.Embedding(len(elements), old.shape[1]).to(old.device, old.dtype)
        with torch.no_grad():
            for row, z in enumerate(elements):
                emb.weight[row] = (old[self.config.elements.index(z)]
                                   if z in self.config.elements else old.mean(0))
        self.element_embedding = emb
        self.config.elements = elements
        lut = torch.full((119,), -1, dtype=torch.long, device=old.device)
        lut[torch.tensor(elements, device=old.device)] = torch.arange(len(elements),
                                                                       device=old.device)
        self.z_to_index = lut
        for stage in self.refiners:
            stage.extend_elements(added)
        return added
