"""Generated airborne LiDAR tiles with ground truth in ASPRS classes, written as real LAS/LAZ files.

Training data for a per-point classifier that is later run on real airborne files (IGN LiDAR HD, USGS 3DEP
such as the Autzen tiles): geometry and the per-point attributes that real files carry are both modelled.

Scene (per tile, drawn from one of four settings: ``rural``, ``suburban``, ``urban``, ``forest``):

* terrain: a smooth multi-octave noise DEM with a regional slope, plus scarps (steps of 0.5-3 m over
  0.2-2 m) and, now and then, a terraced area; roads are cut/filled into it (flat across, with shoulders
  and raised sidewalks), rivers and ponds are carved into it with sloping banks;
* buildings: one or two wings (rectangles, L-shapes) with a flat roof (parapets, rooftop boxes), or a
  gable, hip or shed roof (chimneys; shed or gabled dormers on a third of pitched house roofs), lower annexes;
  3-30 m high, aligned with the nearest road;
* trees without trunks: deciduous crowns made of 1-3 ellipsoid lobes (half of them broad domes, wider than
  deep), conifers as cones, foliage from see-through to opaque; forest stands open or closed (half of them:
  overlapping dense crowns whose tops hide the ground from a single-return sensor, some only 4-10 m tall:
  regrowth, coppice, maquis); clumps of broadleaves merged into one dense dome 5-20 m up; hedges, shrubs,
  orchards (small trees in rows), an understory layer in forests, tall grass and crop fields (a porous layer
  over the ground; crops sown in rows with bare soil between until they close, from 3 cm stubble to maize);
* cars on the roads (driving or parked), a water body (river or pond) with a flat surface, a road bridge
  wherever a road crosses a river, and a power line along a road (poles and three or four catenary wires);
* noise: isolated returns far above (birds, haze) or below (multipath) the surface, and in 30% of tiles a
  multipath burst: 0.2-2% of the pulses around a spot with a return 1.5-80 m under the terrain.

Scan model: one or two flight lines (altitude 800-2000 m above ground, 50-75 m/s), a line scanner whose
scan lines run across track (parallel lines as a rotating polygon draws them, or a zigzag as an oscillating
mirror does), scan angles within +-``max_scan_angle`` degrees (positive right of the flight direction). Each
pulse is traced along its slanted ray: the first solid hit (terrain, roof, wall, car, bridge deck) ends it;
porous volumes on the way (crowns, hedges, shrubs, low vegetation) give returns at exponentially
distributed depths, each taking a share of the pulse energy, separated by a dead zone of 0.8-1.6 m so
that pulses through trees give 2-5 returns and the last one is often the ground; thin wires intercept
part of a pulse when the ray passes within the footprint. Water gives few returns (mostly near nadir).
Intensity is reflectance (per material, with spatial texture) x energy share x incidence cosine x a
per-tile gain, with multiplicative noise: water is dark, roofs and roads mid to high, vegetation returns
lower (they share the pulse). ``gps_time`` (adjusted standard GPS time) increases along each flight line;
all returns of a pulse share it. Returns are ordered by pulse, then by return number.

Labels (:data:`CLASSES`): 2 ground (terrain, roads, sidewalks, river banks), 3/4/5 vegetation returns by
height above the terrain (< 0.5 m, 0.5-2 m, > 2 m; porous returns within 0.1 m of the terrain are ground,
except returns off crop plants 2 cm or more above the soil: crops are not ground),
6 building (roofs, walls, rooftop boxes, chimneys), 1 unclassified (cars, and the rarely hit power-line
poles), 7 noise, 9 water, 14 wire, 17 bridge deck (with its parapets). Every tile has 2, 6 or vegetation
and noise; 9, 14 and 17 appear in the tiles that have water, a power line, a bridge.

Everything is vectorized with NumPy; Python loops run over scene objects, ray batches and return ranks.
A tile depends only on its arguments.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..io.atomic import atomic_output

__all__ = [
    "CLASSES",
    "SCENES",
    "generate_tile",
    "write_tile_las",
    "generate_tiles",
]

UNCLASSIFIED = 1  # cars, power-line poles
GROUND = 2
LOW_VEGETATION = 3
MEDIUM_VEGETATION = 4
HIGH_VEGETATION = 5
BUILDING = 6
NOISE = 7
WATER = 9
WIRE = 14
BRIDGE = 17

CLASSES = {
    2: "ground",
    3: "low vegetation",
    4: "medium vegetation",
    5: "high vegetation",
    6: "building",
    1: "unclassified (cars)",
    7: "noise",
    9: "water",
    14: "wire",
    17: "bridge deck",
}

SCENES = ("rural", "suburban", "urban", "forest")
_SCENE_P = (0.25, 0.3, 0.25, 0.2)

# Ground materials (DEM raster "kind") and their reflectance ranges at 1064 nm.
_GRASS, _SOIL, _ROAD, _PAVED, _WATERK = 0, 1, 2, 3, 4
_KIND_REFL = {
    _GRASS: (0.38, 0.52),
    _SOIL: (0.25, 0.40),
    _ROAD: (0.06, 0.30),  # fresh asphalt is as dark as 0.05-0.1: darker than anything but water
    _PAVED: (0.34, 0.48),
    _WATERK: (0.02, 0.06),
}

_MARGIN = 20.0  # metres of scene generated around the tile (slanted rays reach objects outside it)
_PAD = 1.0e9  # padding for empty ray intervals (range units)
_MAX_RETURNS = 5  # returns per pulse before noise is added
_INTENSITY_SCALE = 2500.0  # intensity of a full return from a reflectance-1 target at nadir (gain 1)


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


def _sstep(x):
    """Smoothstep of x clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _fade(t):
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


class _Grid:
    """Square raster over [lo, hi]^2 (tile-local metres), arrays indexed [iy, ix]."""

    def __init__(self, lo, hi, cell):
        self.lo = float(lo)
        self.cell = float(cell)
        self.n = int(math.ceil((hi - lo) / cell))

    def axis(self):
        return self.lo + (np.arange(self.n) + 0.5) * self.cell

    def index(self, x, y):
        ix = np.floor((x - self.lo) / self.cell).astype(np.int64)
        iy = np.floor((y - self.lo) / self.cell).astype(np.int64)
        inside = (ix >= 0) & (ix < self.n) & (iy >= 0) & (iy < self.n)
        return np.clip(ix, 0, self.n - 1), np.clip(iy, 0, self.n - 1), inside

    def nearest(self, f, x, y):
        ix, iy, _ = self.index(x, y)
        return f[iy, ix]

    def bilinear(self, f, x, y):
        u = (x - self.lo) / self.cell - 0.5
        v = (y - self.lo) / self.cell - 0.5
        i = np.clip(np.floor(u).astype(np.int64), 0, self.n - 2)
        j = np.clip(np.floor(v).astype(np.int64), 0, self.n - 2)
        fu = np.clip(u - i, 0.0, 1.0)
        fv = np.clip(v - j, 0.0, 1.0)
        a = f[j, i] * (1 - fu) + f[j, i + 1] * fu
        b = f[j + 1, i] * (1 - fu) + f[j + 1, i + 1] * fu
        return a * (1 - fv) + b * fv

    def window(self, xmin, xmax, ymin, ymax):
        """Index slices and cell-centre coordinates (2-D, broadcastable) of the cells over a box, or None."""
        i0 = max(int(math.floor((xmin - self.lo) / self.cell)), 0)
        i1 = min(int(math.ceil((xmax - self.lo) / self.cell)), self.n)
        j0 = max(int(math.floor((ymin - self.lo) / self.cell)), 0)
        j1 = min(int(math.ceil((ymax - self.lo) / self.cell)), self.n)
        if i1 <= i0 or j1 <= j0:
            return None
        X = (self.lo + (np.arange(i0, i1) + 0.5) * self.cell)[None, :]
        Y = (self.lo + (np.arange(j0, j1) + 0.5) * self.cell)[:, None]
        return (slice(j0, j1), slice(i0, i1)), X, Y


def _noise(rng, grid, wavelength):
    """Value noise (std ~0.5) with the given wavelength on the grid's cell centres."""
    extent = grid.n * grid.cell
    nc = int(math.ceil(extent / wavelength)) + 3
    vals = rng.standard_normal((nc, nc))
    ax = grid.axis() - grid.lo
    out = []
    for _ in range(2):
        u = ax / wavelength + rng.uniform(0.0, 1.0)
        i = np.floor(u).astype(np.int64)
        out.append((i, _fade(u - i)))
    (ix, fx), (iy, fy) = out
    fx = fx[None, :]
    fy = fy[:, None]
    a = vals[np.ix_(iy, ix)] * (1 - fx) + vals[np.ix_(iy, ix + 1)] * fx
    b = vals[np.ix_(iy + 1, ix)] * (1 - fx) + vals[np.ix_(iy + 1, ix + 1)] * fx
    return a * (1 - fy) + b * fy


def _rot_local(X, Y, cx, cy, yaw):
    """World -> local (u along yaw, v to its left) coordinates."""
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = X - cx, Y - cy
    return dx * c + dy * s, -dx * s + dy * c


class _Polyline:
    """A road or river centre line: points, arc length, projection of arbitrary points onto it."""

    def __init__(self, pts):
        self.pts = np.asarray(pts, np.float64)
        seg = np.diff(self.pts, axis=0)
        self.seglen = np.hypot(seg[:, 0], seg[:, 1])
        self.cum = np.concatenate([[0.0], np.cumsum(self.seglen)])

    @classmethod
    def random(cls, rng, through, angle, half_length, bend):
        u = np.linspace(-half_length, half_length, 17)
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        off = bend * (u / half_length) ** 2 * half_length
        return cls(np.asarray(through)[None, :] + u[:, None] * d[None, :] + off[:, None] * n[None, :])

    def project(self, X, Y):
        """Distance, arc length and signed side (+ left) of points (broadcast arrays) to the line."""
        X, Y = np.broadcast_arrays(np.asarray(X, np.float64), np.asarray(Y, np.float64))
        best = np.full(X.shape, np.inf)
        along = np.zeros(X.shape)
        side = np.ones(X.shape)
        for k in range(len(self.seglen)):
            ax, ay = self.pts[k]
            bx, by = self.pts[k + 1]
            ex, ey = bx - ax, by - ay
            L2 = ex * ex + ey * ey
            t = np.clip(((X - ax) * ex + (Y - ay) * ey) / L2, 0.0, 1.0)
            px, py = X - (ax + t * ex), Y - (ay + t * ey)
            d2 = px * px + py * py
            upd = d2 < best
            best = np.where(upd, d2, best)
            along = np.where(upd, self.cum[k] + t * self.seglen[k], along)
            side = np.where(upd, np.where(ex * (Y - ay) - ey * (X - ax) >= 0, 1.0, -1.0), side)
        return np.sqrt(best), along, side

    def project_grid(self, grid, max_dist):
        """Distance and arc length on every cell of a grid; cells farther than max_dist get inf and 0."""
        best = np.full((grid.n, grid.n), np.inf)
        along = np.zeros((grid.n, grid.n))
        for k in range(len(self.seglen)):
            (ax, ay), (bx, by) = self.pts[k], self.pts[k + 1]
            win = grid.window(min(ax, bx) - max_dist, max(ax, bx) + max_dist,
                              min(ay, by) - max_dist, max(ay, by) + max_dist)
            if win is None:
                continue
            sl, X, Y = win
            ex, ey = bx - ax, by - ay
            t = np.clip(((X - ax) * ex + (Y - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            d2 = (X - ax - t * ex) ** 2 + (Y - ay - t * ey) ** 2
            b = best[sl]
            upd = (d2 < b) & (d2 <= max_dist * max_dist)
            b[upd] = d2[upd]
            along[sl][upd] = (self.cum[k] + t * self.seglen[k])[upd]
        return np.sqrt(best), along

    def point(self, u):
        u = np.clip(np.asarray(u, np.float64), 0.0, self.cum[-1])
        x = np.interp(u, self.cum, self.pts[:, 0])
        y = np.interp(u, self.cum, self.pts[:, 1])
        k = np.clip(np.searchsorted(self.cum, u, side="right") - 1, 0, len(self.seglen) - 1)
        seg = self.pts[k + 1] - self.pts[k]
        return x, y, np.arctan2(seg[..., 1], seg[..., 0])


# ------------------------------------------------------------------------------------------------------------
# Scene
# ------------------------------------------------------------------------------------------------------------


class _Scene:
    def __init__(self, rng, S, scene, water, power_line, rx=None):
        self.rng = rng
        # draws of the features added after the first generator (dormers, orchards, crop rows) come from their
        # own stream: a tile without them is the tile it was before
        self.rx = np.random.default_rng(0) if rx is None else rx
        self.S = S
        self.scene = scene
        lo, hi = -_MARGIN, S + _MARGIN
        self.dem = _Grid(lo, hi, max(0.25, (hi - lo) / 2400.0))
        self.og = _Grid(lo, hi, max(0.1, (hi - lo) / 3000.0))
        n, m = self.dem.n, self.og.n
        self.kind = np.zeros((n, n), np.uint8)
        self.lv_h = np.zeros((n, n), np.float32)  # porous low-vegetation layer height over the terrain
        self.lv_mu = np.zeros((n, n), np.float32)
        self.lv_refl = np.full((n, n), 0.42, np.float32)
        self.lv_crop = np.zeros((n, n), bool)  # a crop field's plants: returns off them are never ground
        self.blocked = np.zeros((n, n), bool)  # no new building / pond here
        self.notree = np.zeros((n, n), bool)
        self.top = np.full((m, m), -np.inf, np.float32)
        self.bot = np.full((m, m), -np.inf, np.float32)
        self.gx = np.zeros((m, m), np.float32)
        self.gy = np.zeros((m, m), np.float32)
        self.oid = np.full((m, m), -1, np.int32)
        self.objects = []  # (class, top reflectance, side reflectance)
        self.crowns = []  # (shape 0 ellipsoid | 1 cone, cx, cy, cz, a, b, c, yaw, mu, refl)
        self.wires = []  # (x0, y0, x1, y1, z0, z1, catenary a, sag, refl)
        self.roads = []
        self.bridges = []  # (road index, u0, u1)
        self.leaf_off = rng.random() < 0.15
        self.area_f = (S / 100.0) ** 2

        self._terrain()
        if water is None:
            p_river = {"rural": 0.35, "suburban": 0.25, "urban": 0.25, "forest": 0.3}[scene]
            r = rng.random()
            water = "river" if r < p_river else ("pond" if r < p_river + 0.2 else False)
        elif water is True:
            water = "river" if rng.random() < 0.6 else "pond"
        if water not in (False, "river", "pond"):
            raise ValueError(f"water must be None, True, False, 'river' or 'pond', got {water!r}")
        self.river = None
        if water == "river":
            self._river_valley()
        self._roads()
        if water == "river":
            self._river_channel()
        elif water == "pond":
            self._pond()
        self._ground_materials()
        self._bridges()
        self._buildings()
        self._cars()
        self._vegetation()
        if power_line is None:
            power_line = rng.random() < {"rural": 0.4, "suburban": 0.35, "urban": 0.1, "forest": 0.15}[scene]
        if power_line:
            self._power_line()
        self.crowns = np.asarray(self.crowns, np.float64).reshape(-1, 10)
        self.wires = np.asarray(self.wires, np.float64).reshape(-1, 9)
        self.objects = np.asarray(self.objects, np.float64).reshape(-1, 3)
        gy, gx = np.gradient(self.G, self.dem.cell)
        self.Ggx, self.Ggy = gx, gy

    def U(self, a, b):
        return float(self.rng.uniform(a, b))

    def zg(self, x, y):
        return self.dem.bilinear(self.G, np.asarray(x, np.float64), np.asarray(y, np.float64))

    def _new_object(self, cls, refl_top, refl_side):
        self.objects.append((cls, refl_top, refl_side))
        return len(self.objects) - 1

    # -- terrain -------------------------------------------------------------------------------------------

    def _terrain(self):
        rng, S, g = self.rng, self.S, self.dem
        relief = {"urban": (0.5, 3.0), "suburban": (1.0, 7.0), "rural": (2.0, 14.0), "forest": (3.0, 25.0)}
        relief = self.U(*relief[self.scene]) * min(1.0, S / 100.0) ** 0.5
        ax = g.axis()
        X, Y = ax[None, :], ax[:, None]
        slope = self.U(0.0, 0.12 if self.scene == "forest" else 0.05)
        # hillsides and mountain flanks (real IGN tiles climb 250 m in 450 m): a ground filter with a fixed
        # slope allowance calls their convex parts objects, so the network must see such terrain
        if rng.random() < {"rural": 0.25, "forest": 0.3, "suburban": 0.1}.get(self.scene, 0.0):
            slope = self.U(0.2, 0.8 if self.scene != "suburban" else 0.35)
        ang = self.U(0, 2 * math.pi)
        G = self.U(20.0, 600.0) + slope * (math.cos(ang) * (X - S / 2) + math.sin(ang) * (Y - S / 2))
        for wl, amp in ((1.0 * S + 50, 1.0), (0.45 * S + 15, 0.5), (0.2 * S + 6, 0.22), (8.0, 0.07), (3.0, 0.025)):
            G = G + relief * amp * _noise(rng, g, wl)
        G = G + 0.015 * _noise(rng, g, 1.0)
        if rng.random() < (0.35 if self.scene in ("rural", "forest") else 0.15):  # terraced hillside
            h = self.U(1.0, 3.0)
            p = self.U(3.0, 7.0)
            q = G / h
            k = np.floor(q)
            f = q - k
            terr = (k + f**p / (f**p + (1 - f) ** p)) * h
            cx, cy, R = self.U(0, S), self.U(0, S), self.U(0.3, 0.8) * S
            w = _sstep((R - np.hypot(X - cx, Y - cy)) / (0.25 * R))
            G = G + w * (terr - G)
        n_steps = rng.choice(4, p=(0.3, 0.35, 0.22, 0.13))
        for _ in range(n_steps):  # scarps, embankments, retaining walls
            px, py, a = self.U(0.1 * S, 0.9 * S), self.U(0.1 * S, 0.9 * S), self.U(0, math.pi)
            H = self.U(0.5, 3.0) * rng.choice((-1.0, 1.0))
            w = self.U(0.2, 2.0)
            Ls = self.U(0.4, 1.5) * S
            sd = -(X - px) * math.sin(a) + (Y - py) * math.cos(a)
            al = (X - px) * math.cos(a) + (Y - py) * math.sin(a)
            G = G + H * _sstep(sd / (2 * w) + 0.5) * _sstep((Ls / 2 - np.abs(al)) / 6.0)
        self.G = G

    # -- roads, water ---------------------------------------------------------------------------------------

    def _roads(self):
        rng, S, g = self.rng, self.S, self.dem
        n = {"urban": (1, 3), "suburban": (1, 3), "rural": (0, 2), "forest": (0, 2)}[self.scene]
        n_roads = int(rng.integers(n[0], n[1] + 1))
        if self.scene == "rural" and rng.random() < 0.6:
            n_roads = max(n_roads, 1)
        ax = g.axis()
        X, Y = ax[None, :], ax[:, None]
        base_ang = self.U(0, math.pi)
        if rng.random() < 0.5:
            base_ang = round(base_ang / (math.pi / 2)) * (math.pi / 2) + rng.normal(0, 0.03)
        half_len = (S / 2 + _MARGIN) * 1.6
        for k in range(n_roads):
            ang = base_ang + (k % 2) * (math.pi / 2 + rng.normal(0, 0.08)) + (k // 2) * rng.normal(0, 0.1)
            through = (self.U(0.2 * S, 0.8 * S), self.U(0.2 * S, 0.8 * S))
            if k == 0 and self.river is not None:  # the first road crosses the river near the tile centre
                line = self.river["line"]
                x, y, a = line.point(line.cum[-1] / 2 + self.U(-0.25, 0.25) * S)
                through = (float(x), float(y))
                ang = float(a) + math.radians(self.U(55, 125))
            bend = 0.0 if self.scene == "urban" else self.U(-0.25, 0.25)
            line = _Polyline.random(rng, through, ang, half_len, bend)
            width = self.U(3.0, 4.5) if self.scene == "forest" else self.U(5.0, 8.0 if self.scene != "urban" else 11.0)
            walk = self.U(1.5, 3.0) if self.scene in ("urban", "suburban") else 0.0
            shoulder = self.U(1.5, 4.0)
            d, u = line.project_grid(g, width / 2 + walk + shoulder + 2.0)
            us = np.arange(0.0, line.cum[-1], 1.0)
            px, py, _ = line.point(us)
            zc = self.zg(px, py)
            k_win = 31
            zc = np.convolve(np.pad(zc, k_win // 2, mode="edge"), np.ones(k_win) / k_win, mode="valid")
            half = width / 2
            zroad = np.interp(u, us, zc) - 0.02 * np.minimum(d, half) + np.where((d > half) & (d <= half + walk), 0.12, 0.0)
            w = _sstep((d - half - walk) / shoulder)
            self.G = zroad + w * (self.G - zroad)
            self.kind[d <= half] = _ROAD
            self.kind[(d > half) & (d <= half + walk)] = _PAVED
            self.blocked |= d <= half + walk + 1.5
            self.notree |= d <= half + 0.5
            self.roads.append(dict(line=line, width=width, walk=walk, us=us, zc=zc))

    def _carve(self, dist_out, level, bank):
        """Water where dist_out <= 0 at `level`; terrain lowered to banks rising with slope `bank` outside."""
        G0 = self.G
        carved = level + np.maximum(dist_out, 0.0) * bank
        self.G = np.where(dist_out <= 0, level, np.minimum(G0, carved))
        water = dist_out <= 0
        self.kind[water] = _WATERK
        bankz = (G0 - self.G) > 0.2
        self.kind[bankz & ~water & (self.kind == _ROAD)] = _SOIL
        self.blocked |= water | bankz
        self.notree |= water
        self.lv_h[water] = 0.0

    def _river_valley(self):
        """River centre line and its flat floodplain (before the roads, which then run across it)."""
        rng, S, g = self.rng, self.S, self.dem
        through = (self.U(0.3 * S, 0.7 * S), self.U(0.3 * S, 0.7 * S))
        line = _Polyline.random(rng, through, self.U(0, math.pi), (S / 2 + _MARGIN) * 1.6, self.U(-0.2, 0.2))
        width = self.U(6.0, 20.0) * min(1.0, S / 60.0) ** 0.5
        us = np.linspace(0, line.cum[-1], 200)
        px, py, _ = line.point(us)
        inside = (px > 0) & (px < S) & (py > 0) & (py < S)
        zc = self.zg(px[inside], py[inside]) if inside.any() else self.zg(px, py)
        level = float(np.percentile(zc, 5)) - self.U(1.0, 2.0)
        plain = level + self.U(0.8, 2.0)
        reach = width / 2 + self.U(3.0, 15.0)
        trans = self.U(10.0, 30.0)
        d, _ = line.project_grid(g, max(reach + trans, width / 2 + 70.0))  # the channel's banks use it too
        w = _sstep((d - reach) / trans)
        self.G = plain + w * (self.G - plain)
        self.river = dict(line=line, width=width, level=level, d=d)

    def _river_channel(self):
        r = self.river
        self._carve(r["d"] - r["width"] / 2, r["level"], self.U(0.5, 1.5))
        self.water_level = r["level"]

    def _pond(self):
        rng, S, g = self.rng, self.S, self.dem
        ax = g.axis()
        X, Y = ax[None, :], ax[:, None]
        R = self.U(6.0, 18.0) * min(1.0, S / 80.0)
        for _ in range(30):
            cx, cy = self.U(0.15 * S, 0.85 * S), self.U(0.15 * S, 0.85 * S)
            ok = True
            for r in self.roads:
                d, _, _ = r["line"].project(np.array([cx]), np.array([cy]))
                ok &= bool(d[0] > 1.5 * R + r["width"] / 2 + r["walk"] + 3)
            if ok:
                break
        else:
            return
        u, v = _rot_local(X, Y, cx, cy, self.U(0, math.pi))
        v = v / self.U(0.5, 1.0)  # elongated
        phi = np.arctan2(v, u)
        rad = np.ones_like(phi)
        for k in range(2, 7):
            rad = rad + self.U(0.0, 0.3 / k) * np.cos(k * phi + self.U(0, 2 * math.pi))
        dist = np.hypot(u, v) - R * rad
        sub = dist <= 0
        level = float(self.G[sub].min()) - self.U(0.2, 0.6)
        self._carve(dist, level, self.U(0.2, 0.6))
        self.water_level = level

    def _ground_materials(self):
        rng, g = self.rng, self.dem
        free = (self.kind != _ROAD) & (self.kind != _PAVED) & (self.kind != _WATERK)
        nz = _noise(rng, g, self.U(8, 25))
        soil_frac = {"rural": 0.35, "suburban": 0.1, "urban": 0.1, "forest": 0.3}[self.scene]
        self.kind[free & (nz > np.quantile(nz, 1 - soil_frac))] = _SOIL
        if self.scene == "urban":
            nz2 = _noise(rng, g, self.U(10, 30))
            self.kind[free & (nz2 > np.quantile(nz2, 0.6))] = _PAVED
        lo = np.array([_KIND_REFL[k][0] for k in range(5)])
        hi = np.array([_KIND_REFL[k][1] for k in range(5)])
        base = lo + rng.uniform(0.3, 0.7, 5) * (hi - lo)
        tex = 0.5 * _noise(rng, g, self.U(2, 6)) + 0.5 * _noise(rng, g, 0.8)
        self.refl = (base[self.kind] * (1.0 + 0.3 * tex)).astype(np.float32)

    def _bridges(self):
        for ri, r in enumerate(self.roads):
            line = r["line"]
            us = np.arange(0.0, line.cum[-1], 0.5)
            px, py, _ = line.point(us)
            zc = np.interp(us, r["us"], r["zc"])
            depth = zc - self.zg(px, py)
            wet = self.dem.nearest(self.kind, px, py) == _WATERK
            low = depth > 0.4
            # contiguous runs of `low` containing water
            edges = np.flatnonzero(np.diff(np.concatenate([[0], low.astype(np.int8), [0]])))
            for a, b in zip(edges[::2], edges[1::2]):
                if not wet[a:b].any():
                    continue
                u0, u1 = us[a] - 2.0, us[b - 1] + 2.0
                self._deck(ri, r, u0, u1)

    def _deck(self, ri, r, u0, u1):
        line = r["line"]
        x0, y0, _ = line.point(u0)
        x1, y1, _ = line.point(u1)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        yaw = math.atan2(y1 - y0, x1 - x0)
        L = math.hypot(x1 - x0, y1 - y0)
        W = r["width"] + 2 * r["walk"] + self.U(0.6, 1.6)
        thick = self.U(0.8, 1.6)
        ztop_road = np.interp(np.linspace(u0, u1, 50), r["us"], r["zc"])
        bot = float(ztop_road.min()) + 0.05 - thick
        oid = self._new_object(BRIDGE, self.U(0.22, 0.32), self.U(0.3, 0.45))
        rad = math.hypot(L, W) / 2
        win = self.og.window(cx - rad, cx + rad, cy - rad, cy + rad)
        if win is None:
            return
        sl, X, Y = win
        u, v = _rot_local(X, Y, cx, cy, yaw)
        m = (np.abs(u) <= L / 2) & (np.abs(v) <= W / 2)
        h = np.interp(u0 + (u + L / 2), r["us"], r["zc"]) + 0.05
        h = h + np.where(np.abs(v) > W / 2 - 0.3, self.U(0.8, 1.2), 0.0)  # parapets
        self._paint(sl, m, h, oid, bot=bot)
        self.bridges.append((ri, u0, u1))
        wd = self.dem.window(cx - rad, cx + rad, cy - rad, cy + rad)
        if wd is not None:
            sl2, X2, Y2 = wd
            u2, v2 = _rot_local(X2, Y2, cx, cy, yaw)
            self.blocked[sl2] |= (np.abs(u2) <= L / 2 + 2) & (np.abs(v2) <= W / 2 + 2)

    # -- objects in the object raster -----------------------------------------------------------------------

    def _paint(self, sl, mask, h, oid, gx=0.0, gy=0.0, bot=-np.inf):
        top = self.top[sl]
        h = np.broadcast_to(h, mask.shape)
        upd = mask & (h > top)
        if not upd.any():
            return
        top[upd] = h[upd]
        self.oid[sl][upd] = oid
        self.bot[sl][upd] = bot
        self.gx[sl][upd] = np.broadcast_to(gx, mask.shape)[upd]
        self.gy[sl][upd] = np.broadcast_to(gy, mask.shape)[upd]

    def _rect_window(self, grid, cx, cy, L, W, yaw, buf=0.0):
        rad = math.hypot(L, W) / 2 + buf
        win = grid.window(cx - rad, cx + rad, cy - rad, cy + rad)
        if win is None:
            return None
        sl, X, Y = win
        u, v = _rot_local(X, Y, cx, cy, yaw)
        return sl, u, v, (np.abs(u) <= L / 2 + buf) & (np.abs(v) <= W / 2 + buf)

    def _road_yaw(self, x, y):
        best, yaw = np.inf, None
        for r in self.roads:
            d, u, _ = r["line"].project(np.array([x]), np.array([y]))
            if d[0] < best:
                best = d[0]
                yaw = float(r["line"].point(u[0])[2])
        return yaw

    def _building_plan(self):
        """Random building: list of wings (cx, cy offsets in the building frame, L, W, yaw offset), roof."""
        rng, U = self.rng, self.U
        sc = self.scene
        kind = sc
        if sc == "urban" and rng.random() < 0.2:
            kind = "industrial"
        if sc == "rural" and rng.random() < 0.5:
            kind = "barn"
        if sc in ("rural", "forest") and kind != "barn":
            kind = "house"
        if sc == "suburban":
            kind = "house"
        if kind == "urban":
            L, W = U(14, 40), U(10, 22)
            roof = rng.choice(["flat", "hip", "gable"], p=(0.7, 0.15, 0.15))
            eave = U(8.0, 27.0) if roof == "flat" else U(8.0, 20.0)
            pitch = U(20, 40)
        elif kind == "industrial":
            L, W = U(30, 60), U(18, 35)
            roof = rng.choice(["flat", "gable"], p=(0.75, 0.25))
            eave = U(6.0, 14.0)
            pitch = U(5, 12)
        elif kind == "barn":
            L, W = U(15, 40), U(9, 18)
            roof = "gable"
            eave = U(3.5, 8.0)
            pitch = U(10, 25)
        else:
            L, W = U(8, 16), U(6, 10.5)
            roof = rng.choice(["gable", "hip", "flat", "shed"], p=(0.5, 0.3, 0.12, 0.08))
            eave = U(2.8, 6.5) if roof != "flat" else U(3.0, 9.0)
            pitch = U(25, 50) if roof != "shed" else U(8, 20)
        W = min(W, L)
        S = self.S
        if S < 60:  # keep buildings within reach of small tiles
            L, W = min(L, 0.6 * S), min(W, 0.5 * S)
        eave = min(max(eave, 2.8 if roof != "flat" else 3.0), 30.0)
        pitch = math.radians(pitch)
        if roof in ("gable", "hip"):
            pitch = min(pitch, math.atan((30.0 - eave) / (W / 2)))
        elif roof == "shed":
            pitch = min(pitch, math.atan((30.0 - eave) / W))
        wings = [(0.0, 0.0, L, W, 0.0)]
        if rng.random() < (0.35 if kind in ("house", "urban") else 0.15):  # L-shape
            Wb = W * U(0.6, 1.0)
            ext = W * U(0.4, 1.2)
            su, sv = rng.choice((-1.0, 1.0)), rng.choice((-1.0, 1.0))
            ub = su * (L / 2 - Wb / 2)
            vb = sv * ext / 2  # spans v in [-W/2, W/2 + ext] on that side
            wings.append((ub, vb, W + ext, Wb, math.pi / 2))
        annex = None
        if kind == "house" and rng.random() < 0.3:
            aw, al = U(3.0, 5.0), U(4.0, 7.0)
            sv = rng.choice((-1.0, 1.0))
            annex = (U(-L / 2 + al / 2, L / 2 - al / 2) if L > al else 0.0, sv * (W / 2 + aw / 2), al, aw)
        return dict(kind=kind, wings=wings, roof=roof, eave=eave, pitch=pitch, annex=annex)

    def _buildings(self):
        rng, S = self.rng, self.S
        lo, hi = {"urban": (4, 10), "suburban": (6, 15), "rural": (0, 4), "forest": (0, 2)}[self.scene]
        n_target = int(round(rng.integers(lo, hi + 1) * self.area_f))
        placed, tries = 0, 0
        gap = {"urban": 1.0, "suburban": 3.0, "rural": 4.0, "forest": 4.0}[self.scene]
        while placed < n_target and tries < 40 * max(n_target, 1):
            tries += 1
            plan = self._building_plan()
            cx, cy = self.U(-0.05 * S, 1.05 * S), self.U(-0.05 * S, 1.05 * S)
            yaw = self._road_yaw(cx, cy) if (self.roads and rng.random() < 0.85) else self.U(0, math.pi)
            yaw += rng.choice((0.0, math.pi / 2)) + rng.normal(0, 0.02)
            # footprint test on the DEM raster (with the setback/gap)
            ok, cells = True, []
            rects = [(cx + du * math.cos(yaw) - dv * math.sin(yaw), cy + du * math.sin(yaw) + dv * math.cos(yaw), L, W, yaw + dy)
                     for du, dv, L, W, dy in plan["wings"]]
            if plan["annex"] is not None:
                du, dv, al, aw = plan["annex"]
                rects.append((cx + du * math.cos(yaw) - dv * math.sin(yaw), cy + du * math.sin(yaw) + dv * math.cos(yaw), al, aw, yaw))
            for rx, ry, L, W, y in rects:
                w = self._rect_window(self.dem, rx, ry, L, W, y, buf=gap)
                if w is None:
                    ok = False
                    break
                sl, u, v, m = w
                if (self.blocked[sl] & m).any():
                    ok = False
                    break
                cells.append((sl, m))
            if not ok:
                continue
            for sl, m in cells:
                self.blocked[sl] |= m
            self._build(plan, rects)
            placed += 1

    def _build(self, plan, rects):
        rng, U = self.rng, self.U
        roof = plan["roof"]
        if roof == "flat":
            refl = U(0.12, 0.35)
        elif plan["kind"] in ("barn", "industrial"):
            refl = U(0.2, 0.6)  # sheet metal, fibre cement
        else:
            refl = U(0.15, 0.5) if rng.random() < 0.8 else U(0.08, 0.16)  # tiles / slate
        oid = self._new_object(BUILDING, refl, U(0.3, 0.5))
        # base: mean terrain under the main wing
        rx, ry, L, W, yaw = rects[0]
        w = self._rect_window(self.dem, rx, ry, L, W, yaw)
        base = float(self.G[w[0]][w[3]].mean()) if w is not None and w[3].any() else float(self.zg(rx, ry))
        eave, tp = base + plan["eave"], math.tan(plan["pitch"])
        nwing = len(plan["wings"])
        for k, (rx, ry, L, W, yaw) in enumerate(rects):
            win = self._rect_window(self.og, rx, ry, L, W, yaw)
            if win is None:
                continue
            sl, u, v, m = win
            hl, hw = L / 2, W / 2
            du = np.zeros_like(u)
            dv = np.zeros_like(v)
            if k >= nwing:  # annex: low flat or shed roof
                h = np.full(np.broadcast_shapes(u.shape, v.shape), base + U(2.6, 3.4))
                self._paint(sl, m, h, self._new_object(BUILDING, U(0.12, 0.4), U(0.3, 0.5)))
                continue
            if roof == "flat":
                h = eave + 0.0 * u + 0.0 * v
                if rng.random() < 0.6:  # parapet
                    pw, ph = U(0.2, 0.5), U(0.3, 1.0)
                    h = h + np.where(np.minimum(hl - np.abs(u), hw - np.abs(v)) < pw, ph, 0.0)
            elif roof == "gable":
                h = eave + tp * (hw - np.abs(v)) + 0.0 * u
                dv = -tp * np.sign(v) + 0.0 * u
            elif roof == "hip":
                a, b = hw - np.abs(v), hl - np.abs(u)
                h = eave + tp * np.minimum(a, b)
                dv = np.where(a <= b, -tp * np.sign(v), 0.0)
                du = np.where(a > b, -tp * np.sign(u), 0.0)
            else:  # shed
                h = eave + tp * (v + hw) + 0.0 * u
                dv = np.full(h.shape, tp)
            c, s = math.cos(yaw), math.sin(yaw)
            gx, gy = du * c - dv * s, du * s + dv * c
            self._paint(sl, m, h, oid, gx, gy)
            if roof in ("gable", "hip") and plan["kind"] in ("house", "urban") and k == 0 and W >= 6.5 \
                    and self.rx.random() < 0.35:
                self._dormers(rx, ry, L, W, yaw, eave, tp, roof, oid)
            # rooftop furniture
            if roof == "flat":
                for _ in range(int(rng.integers(0, 2 + int(L * W / 150)))):
                    bl, bw = U(1.0, 4.0), U(1.0, 3.0)
                    if bl > L - 2 or bw > W - 2:
                        continue
                    bu, bv = U(-hl + bl / 2 + 1, hl - bl / 2 - 1), U(-hw + bw / 2 + 1, hw - bw / 2 - 1)
                    bx, by = rx + bu * c - bv * s, ry + bu * s + bv * c
                    w2 = self._rect_window(self.og, bx, by, bl, bw, yaw + rng.normal(0, 0.02))
                    if w2 is not None:
                        self._paint(w2[0], w2[3], eave + U(0.5, 2.2), self._new_object(BUILDING, U(0.25, 0.6), U(0.25, 0.6)))
            elif rng.random() < 0.5:  # chimney near the ridge
                cu, cv = U(-0.7 * hl, 0.7 * hl), U(-0.3 * hw, 0.3 * hw)
                cw = U(0.5, 0.9)
                bx, by = rx + cu * c - cv * s, ry + cu * s + cv * c
                w2 = self._rect_window(self.og, bx, by, cw, cw, yaw)
                if w2 is not None:
                    ridge = eave + tp * min(hw, hl if roof == "hip" else hw)
                    self._paint(w2[0], w2[3], ridge + U(0.3, 1.0), self._new_object(BUILDING, U(0.15, 0.35), U(0.15, 0.35)))

    def _dormers(self, rx, ry, L, W, yaw, eave, tp, roof, oid):
        """1-3 dormers on one or both slopes of a gable / hip roof: a vertical front wall set back from the
        eave and a shed roof (flatter than the main one) or a small gable whose ridge runs up the slope; painted
        as a maximum, so each dormer ends where it meets the main roof."""
        r = self.rx
        hl, hw = L / 2, W / 2
        c, s = math.cos(yaw), math.sin(yaw)
        for side in ((-1.0, 1.0) if r.random() < 0.5 else (float(r.choice((-1.0, 1.0))),)):
            n = int(r.integers(1, 4))
            span = hl - (hw if roof == "hip" else 0.5) - 1.0  # stay off the hips and gable ends
            width = r.uniform(1.4, 3.2)
            if span < width / 2:
                continue
            for cu in np.linspace(-span + width / 2, span - width / 2, n) if n > 1 else [r.uniform(-0.3, 0.3) * span]:
                setback = r.uniform(0.4, 1.5)
                v_front = hw - setback  # distance of the front wall from the ridge line
                h_front = eave + tp * setback + r.uniform(0.9, 1.7)
                depth = v_front  # reaches back to the ridge at most; the max-paint cuts it at the roof
                bu, bv = cu, side * (v_front - depth / 2)
                bx, by = rx + bu * c - bv * s, ry + bu * s + bv * c
                win = self._rect_window(self.og, bx, by, width, depth, yaw)
                if win is None:
                    continue
                sl, u, v, m = win
                back = depth / 2 - side * v  # metres behind the front wall (v in the dormer's frame)
                if r.random() < 0.6:  # shed dormer
                    ts = math.tan(math.radians(r.uniform(5.0, 15.0)))
                    h = h_front + ts * back + 0.0 * u
                    du, dv = 0.0 * h, np.full(h.shape, -side * ts)
                else:  # gabled dormer, ridge up the slope
                    tg = math.tan(math.radians(r.uniform(30.0, 50.0)))
                    h = h_front + tg * (width / 2 - np.abs(u)) + 0.0 * v
                    du, dv = -tg * np.sign(u) + 0.0 * v, 0.0 * h
                gx, gy = du * c - dv * s, du * s + dv * c
                self._paint(sl, m, h, oid, gx, gy)

    def _cars(self):
        rng, U = self.rng, self.U
        lo, hi = {"urban": (10, 25), "suburban": (4, 12), "rural": (0, 4), "forest": (0, 2)}[self.scene]
        n = int(round(rng.integers(lo, hi + 1) * self.area_f))
        if not self.roads or n == 0:
            return
        S = self.S
        taken = []
        for _ in range(4 * n):
            if len(taken) >= n:
                break
            ri = int(rng.integers(len(self.roads)))
            r = self.roads[ri]
            line = r["line"]
            u = U(0, line.cum[-1])
            x, y, a = line.point(u)
            x, y, a = float(x), float(y), float(a)
            if not (-8 < x < S + 8 and -8 < y < S + 8):
                continue
            if any(b[0] == ri and b[1] - 4 < u < b[2] + 4 for b in self.bridges):
                continue
            hw = r["width"] / 2
            side = rng.choice((-1.0, 1.0))
            if rng.random() < 0.5 and hw > 2.6:
                v = side * (hw - U(1.0, 1.3))  # parked
            else:
                v = side * hw / 2  # driving, on its side of the road
            yaw = a + (0.0 if side < 0 else math.pi) + rng.normal(0, 0.03)
            cx, cy = x - v * math.sin(a), y + v * math.cos(a)
            if any(math.hypot(cx - tx, cy - ty) < 6.0 for tx, ty in taken):
                continue
            if self.dem.nearest(self.kind, np.array([cx]), np.array([cy]))[0] == _WATERK:
                continue
            taken.append((cx, cy))
            if rng.random() < 0.15:  # van
                L, W, ht, hb = U(4.8, 6.0), U(1.9, 2.1), U(1.9, 2.5), U(1.0, 1.2)
            else:
                L, W, ht, hb = U(3.8, 5.0), U(1.65, 1.95), U(1.35, 1.6), U(0.8, 1.05)
            r_ = rng.random()
            refl = U(0.45, 0.75) if r_ < 0.4 else (U(0.05, 0.15) if r_ < 0.7 else U(0.2, 0.45))
            oid = self._new_object(UNCLASSIFIED, refl, refl * 0.8)
            win = self._rect_window(self.og, cx, cy, L, W, yaw)
            if win is None:
                continue
            sl, uu, vv, m = win
            base = float(self.zg(cx, cy))
            cab = _sstep((0.22 * L - np.abs(uu + 0.08 * L)) / (0.12 * L))
            edge = _sstep((W / 2 - np.abs(vv)) / 0.25)
            h = base + (hb + (ht - hb) * cab) * (0.85 + 0.15 * edge)
            self._paint(sl, m, h, oid)
            wd = self._rect_window(self.dem, cx, cy, L, W, yaw, buf=0.5)
            if wd is not None:
                self.notree[wd[0]] |= wd[3]

    # -- vegetation -----------------------------------------------------------------------------------------

    def _deciduous(self, x, y, height, r_max=8.0, dense=1.0):
        """Crown of 1-3 ellipsoid lobes; foliage is dense in an outer shell and sparse inside. dense scales the
        foliage's extinction (opaque crowns, closed stands)."""
        rng, U = self.rng, self.U
        z0 = float(self.zg(x, y))
        cd = height * U(0.45, 0.75)
        base = height - cd
        r = float(np.clip(cd * U(0.45, 0.8), 1.2, r_max))
        mu = U(0.5, 1.2) * (0.3 if self.leaf_off else dense)
        mu_in = mu * U(0.05, 0.25)
        shell = U(1.0, 2.0)
        refl = U(0.35, 0.55)
        lobes = [(x, y, z0 + base + cd / 2, r * U(0.9, 1.1), r * U(0.9, 1.1), cd / 2)]
        for _ in range(int(rng.choice(3, p=(0.5, 0.3, 0.2)))):
            ang, off = U(0, 2 * math.pi), r * U(0.2, 0.45)
            f = U(0.55, 0.8)
            lobes.append((x + off * math.cos(ang), y + off * math.sin(ang), z0 + base + cd / 2 + U(-0.2, 0.1) * cd,
                          r * f, r * f * U(0.85, 1.15), cd / 2 * f))
        # half the crowns are broad domes, wider than deep (tops kept): merged into a stand or a clump they give a
        # single-return sensor a smooth envelope at roof height, as real leaf-on broadleaves do (extra stream)
        flat = self.rx.uniform(0.4, 0.8) if self.rx.random() < 0.5 else 1.0
        lobes = [(lx, ly, lz + c * (1.0 - flat), a, b, c * flat) for lx, ly, lz, a, b, c in lobes]
        for lx, ly, lz, a, b, c in lobes:
            yaw = U(0, math.pi)
            m = mu * U(0.85, 1.15)
            self.crowns.append((0, lx, ly, lz, a, b, c, yaw, m, refl))
            if min(a, b, c) > shell + 0.3:  # sparser interior: adds (mu_in - m) inside the shell
                self.crowns.append((0, lx, ly, lz, a - shell, b - shell, c - shell, yaw, mu_in - m, refl))

    def _conifer(self, x, y, height, r_max=5.0, dense=1.0):
        U = self.U
        z0 = float(self.zg(x, y))
        hc = height * U(0.6, 0.85)
        R = min(hc * U(0.18, 0.3), r_max)
        mu = U(0.6, 1.4) * dense
        self.crowns.append((1, x, y, z0 + height, R, R, hc, 0.0, mu, U(0.25, 0.4)))
        shell = U(0.8, 1.5)
        drop = shell * math.hypot(R, hc) / R  # apex offset giving a shell `shell` thick
        if hc - drop > 1.0:
            Ri = R * (hc - drop) / hc
            self.crowns.append((1, x, y, z0 + height - drop, Ri, Ri, hc - drop, 0.0, mu * U(0.1, 0.3) - mu, U(0.25, 0.4)))

    def _tree(self, x, y, height, conifer_p, r_max=None, dense=1.0):
        if self.rng.random() < conifer_p:
            self._conifer(x, y, height, 5.0 if r_max is None else r_max, dense)
        else:
            self._deciduous(x, y, height, 8.0 if r_max is None else r_max, dense)

    def _free(self, x, y, mask=None):
        mask = self.notree if mask is None else mask
        return ~self.dem.nearest(mask, np.asarray(x), np.asarray(y))

    def _vegetation(self):
        rng, U, S, g = self.rng, self.U, self.S, self.dem
        sc, af = self.scene, self.area_f
        ax = g.axis()
        X, Y = ax[None, :], ax[:, None]
        # buildings keep trees out (crowns may overhang)
        near_bld = np.zeros_like(self.notree)
        oy, ox = np.nonzero(self.oid >= 0)
        oax = self.og.axis()
        ix, iy, _ = g.index(oax[ox], oax[oy])
        near_bld[iy, ix] = True
        self.notree |= near_bld
        grow = self.kind != _WATERK

        # forest patches
        n_forest = {"forest": int(rng.integers(1, 3)), "rural": int(rng.random() < 0.4), "suburban": int(rng.random() < 0.2),
                    "urban": 0}[sc]
        for f in range(n_forest):
            if sc == "forest" and f == 0:
                cx, cy, rx, ry = S / 2 + U(-0.2, 0.2) * S, S / 2 + U(-0.2, 0.2) * S, U(0.7, 1.2) * S, U(0.7, 1.2) * S
            else:
                cx, cy, rx, ry = U(0, S), U(0, S), U(0.2, 0.5) * S, U(0.2, 0.5) * S
            conifer_p = float(rng.choice((0.0, U(0, 1), 1.0), p=(0.4, 0.3, 0.3)))
            hmean = U(10.0, 32.0)
            sp = hmean * U(0.25, 0.45)
            # A closed stand: crowns overlap and are dense, so that first returns rarely reach the ground (real
            # closed forests under a single-return sensor: no ground return in most 10 m cells, against a third
            # of the returns in the open stands). Some are low (regrowth, coppice, maquis: a canopy 4-10 m up,
            # at roof height). Their draws come from the extra stream: open stands are unchanged.
            closed = self.rx.random() < 0.5
            lowest = 5.0
            if closed:
                self.rng, saved = self.rx, self.rng
                rng, U = self.rng, self.U
                if U(0, 1) < 0.4:
                    hmean, lowest = U(4.0, 10.0), 2.5
                sp, reach, dense = max(hmean * U(0.16, 0.28), 1.5), U(0.6, 1.1), U(2.0, 5.0)
            xs = np.arange(cx - rx, cx + rx, sp)
            ys = np.arange(cy - ry, cy + ry, sp)
            TX, TY = np.meshgrid(xs, ys)
            TX = TX.ravel() + rng.uniform(-0.4, 0.4, TX.size) * sp
            TY = TY.ravel() + rng.uniform(-0.4, 0.4, TY.size) * sp
            planted = rng.random(TX.size) < (0.95 if closed else 0.85)
            keep = (((TX - cx) / rx) ** 2 + ((TY - cy) / ry) ** 2 <= 1) & planted
            keep &= (TX > -_MARGIN + 2) & (TX < S + _MARGIN - 2) & (TY > -_MARGIN + 2) & (TY < S + _MARGIN - 2)
            keep &= self._free(TX, TY)
            spread = (2.5 + 0.1 * hmean if lowest > 2.5 else 0.2 * hmean) * (U(0.3, 1.0) if closed else 1.0)
            hs = np.clip(rng.normal(hmean, spread, TX.size), lowest, 45.0)  # uneven canopies
            for x, y, h in zip(TX[keep], TY[keep], hs[keep]):
                if closed:
                    self._tree(float(x), float(y), float(h), conifer_p, r_max=reach * sp * U(0.9, 1.2), dense=dense)
                else:
                    self._tree(float(x), float(y), float(h), conifer_p, r_max=0.5 * sp * U(0.9, 1.3))
            if closed:
                self.rng = saved
                rng, U = self.rng, self.U
            # understory
            inside = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1
            patch = np.clip(_noise(rng, g, U(4, 12)) + U(0.0, 0.4), 0.0, 1.0)
            lvh = U(0.3, 1.6) * patch
            m = inside & grow & (self.kind != _ROAD) & (self.kind != _PAVED) & (lvh > 0.05)
            self.lv_h[m] = np.maximum(self.lv_h[m], lvh[m])
            self.lv_mu[m] = U(0.8, 2.5)
            self.notree |= inside  # no more trees planted in the forest
            self.kind[inside & (self.kind == _GRASS)] = _SOIL

        # isolated / garden / park trees
        lo, hi = {"urban": (2, 8), "suburban": (8, 25), "rural": (4, 15), "forest": (2, 8)}[sc]
        n = int(round(rng.integers(lo, hi + 1) * af))
        xs, ys = rng.uniform(-5, S + 5, 3 * n + 1), rng.uniform(-5, S + 5, 3 * n + 1)
        ok = self._free(xs, ys)
        # leaf-on crowns of free-standing trees vary from see-through to opaque (extra stream: same trees)
        for x, y in list(zip(xs[ok], ys[ok]))[:n]:
            self._tree(float(x), float(y), U(4.0, 18.0) if rng.random() < 0.6 else U(15.0, 40.0), 0.25,
                       dense=self.rx.uniform(1.0, 4.0))
        # clumps: a group of broadleaves whose dense crowns merge into one smooth dome, 5-20 m up and 8-24 m across
        # (to a single-return sensor a curved roof). A stream of their own, spawned without drawing from rx: the
        # rest of the tile is unchanged.
        if not self.leaf_off:
            rc = np.random.default_rng(self.rx.bit_generator.seed_seq.spawn(1)[0])
            k = int(rc.integers(0, {"urban": 2, "suburban": 4, "rural": 4, "forest": 3}[sc] + 1))
            xs, ys = rc.uniform(0, S, 4 * k + 1), rc.uniform(0, S, 4 * k + 1)
            ok = self._free(xs, ys)
            for x, y in list(zip(xs[ok], ys[ok]))[:k]:
                z0 = float(self.zg(x, y))
                top = z0 + rc.uniform(5.0, 20.0)
                a, b = rc.uniform(4.0, 12.0), rc.uniform(4.0, 10.0)
                mu, refl = rc.uniform(2.0, 5.0), rc.uniform(0.35, 0.55)
                yaw = rc.uniform(0, math.pi)
                for j in range(int(rc.integers(1, 5))):  # the main dome and lower lobes on its sides
                    f = 1.0 if j == 0 else rc.uniform(0.45, 0.8)
                    ang, off = rc.uniform(0, 2 * math.pi), 0.0 if j == 0 else rc.uniform(0.3, 0.7) * a
                    c = rc.uniform(0.25, 0.45) * (top - z0) * f
                    self.crowns.append((0, x + off * math.cos(ang), y + off * math.sin(ang),
                                        top - (0.0 if j == 0 else rc.uniform(0.3, 2.0)) - c, a * f, b * f, c,
                                        yaw, mu, refl))
        # big old trees beside houses: their crowns spread over the roofs (suburbs under tall canopy)
        if sc in ("suburban", "urban") and len(oy):
            m = int(rng.integers(0, {"suburban": 6, "urban": 3}[sc] + 1))
            pick = rng.integers(0, len(oy), 4 * m + 1)
            ang = rng.uniform(0, 2 * math.pi, pick.size)
            off = rng.uniform(3.0, 7.0, pick.size)
            tx, ty = oax[ox[pick]] + off * np.cos(ang), oax[oy[pick]] + off * np.sin(ang)
            ok = ~self.dem.nearest(near_bld, tx, ty) & (np.abs(tx - S / 2) < S / 2 + 5) & (np.abs(ty - S / 2) < S / 2 + 5)
            for x, y in list(zip(tx[ok], ty[ok]))[:m]:
                self._deciduous(float(x), float(y), U(12.0, 35.0), r_max=U(6.0, 11.0),
                                dense=self.rx.uniform(1.5, 4.0))
        # street trees
        if sc in ("urban", "suburban"):
            for r in self.roads:
                if rng.random() < 0.6:
                    line = r["line"]
                    step, off = U(7.0, 14.0), r["width"] / 2 + r["walk"] + U(0.3, 1.5)
                    h = U(6.0, 20.0)
                    for side in (-1.0, 1.0):
                        for u in np.arange(U(0, step), line.cum[-1], step):
                            x, y, a = line.point(u)
                            tx, ty = float(x - side * off * math.sin(a)), float(y + side * off * math.cos(a))
                            if not (-10 < tx < S + 10 and -10 < ty < S + 10):
                                continue
                            if self._free(np.array([tx]), np.array([ty]), near_bld | (self.kind == _WATERK))[0]:
                                self._deciduous(tx, ty, h * U(0.85, 1.15), dense=self.rx.uniform(1.0, 3.0))
        # tree rows in the countryside
        if sc == "rural" and rng.random() < 0.6:
            x0, y0, a = U(0, S), U(0, S), U(0, math.pi)
            sp = U(6.0, 10.0)
            for t in np.arange(-S, S, sp):
                x, y = x0 + t * math.cos(a), y0 + t * math.sin(a)
                if -10 < x < S + 10 and -10 < y < S + 10 and self._free(np.array([x]), np.array([y]))[0]:
                    self._tree(x, y, U(8.0, 18.0), 0.1)
        # orchards: small trees in a grid of rows, grass between them
        if sc == "rural" and self.rx.random() < 0.35:
            rx = self.rx
            cx, cy, a = rx.uniform(0.2, 0.8) * S, rx.uniform(0.2, 0.8) * S, rx.uniform(0, math.pi)
            L, W, row, step = rx.uniform(30, 70), rx.uniform(25, 50), rx.uniform(4.0, 7.0), rx.uniform(2.5, 5.0)
            h, r_max = rx.uniform(2.5, 6.0), rx.uniform(1.0, 2.2)
            uu, vv = np.meshgrid(np.arange(-L / 2, L / 2, step), np.arange(-W / 2, W / 2, row))
            tx = cx + uu.ravel() * math.cos(a) - vv.ravel() * math.sin(a)
            ty = cy + uu.ravel() * math.sin(a) + vv.ravel() * math.cos(a)
            keep = self._free(tx, ty) & (rx.random(tx.size) < 0.92)  # a few missing trees
            for x, y, hh in zip(tx[keep], ty[keep], h * rx.uniform(0.85, 1.15, tx.size)[keep]):
                self._deciduous(float(x), float(y), float(hh), r_max=r_max)
            u, v = _rot_local(X, Y, cx, cy, a)
            self.notree |= (np.abs(u) <= L / 2 + 2) & (np.abs(v) <= W / 2 + 2)
        # hedges
        lo, hi = {"urban": (0, 2), "suburban": (2, 6), "rural": (2, 6), "forest": (0, 1)}[sc]
        for _ in range(int(round(rng.integers(lo, hi + 1) * af))):
            x0, y0, a, L = U(0, S), U(0, S), U(0, math.pi), U(8.0, 40.0)
            if self.roads and rng.random() < 0.5:
                a = self._road_yaw(x0, y0)
            h, b = U(1.0, 3.0), U(0.5, 1.0)
            mu = U(1.5, 3.0)
            refl = U(0.35, 0.5)
            for t in np.arange(-L / 2, L / 2, U(1.2, 2.0)):
                x, y = x0 + t * math.cos(a), y0 + t * math.sin(a)
                if not self._free(np.array([x]), np.array([y]))[0]:
                    continue
                hh = h * U(0.85, 1.15)
                self.crowns.append((0, x, y, float(self.zg(x, y)) + hh / 2 + U(0.0, 0.15), U(1.0, 1.8), b * U(0.85, 1.15),
                                    hh / 2, a + rng.normal(0, 0.05), mu, refl))
        # shrubs
        lo, hi = {"urban": (4, 12), "suburban": (10, 30), "rural": (5, 20), "forest": (5, 20)}[sc]
        n = int(round(rng.integers(lo, hi + 1) * af))
        xs, ys = rng.uniform(-5, S + 5, 2 * n + 1), rng.uniform(-5, S + 5, 2 * n + 1)
        ok = self._free(xs, ys)
        for x, y in list(zip(xs[ok], ys[ok]))[:n]:
            r, h = U(0.4, 1.5), U(0.4, 2.4)
            self.crowns.append((0, float(x), float(y), float(self.zg(x, y)) + h / 2, r, r * U(0.8, 1.2), h / 2, U(0, math.pi),
                                U(1.5, 3.5), U(0.3, 0.5)))
        # crop fields and tall grass: porous layer over the terrain
        lo, hi = {"urban": (0, 1), "suburban": (0, 2), "rural": (1, 3), "forest": (0, 1)}[sc]
        for k in range(int(rng.integers(lo, hi + 1))):
            crop = sc == "rural" and (k == 0 or rng.random() < 0.5)
            cx, cy, a = U(0, S), U(0, S), U(0, math.pi)
            L, W = U(0.3, 0.9) * S, U(0.2, 0.6) * S
            u, v = _rot_local(X, Y, cx, cy, a)
            m = (np.abs(u) <= L / 2) & (np.abs(v) <= W / 2) & (self.kind != _ROAD) & (self.kind != _PAVED) & grow
            m &= ~self.blocked | (self.kind == _GRASS) | (self.kind == _SOIL)
            m &= ~near_bld
            h = U(0.05, 2.0) if crop else U(0.08, 0.4)  # crops from stubble to maize
            hf = h * (1.0 + 0.15 * _noise(rng, g, 3.0))
            if crop:
                rx = self.rx
                if rx.random() < 0.4:  # stubble and young crops, a few cm to 30 cm (the 3DEP farmland)
                    hf *= rx.uniform(0.03, 0.3) / h
                # sown in rows 0.5-0.9 m apart, bare soil between them until the plants close over
                row, cover = rx.uniform(0.5, 0.9), rx.uniform(0.35, 1.0)
                m &= np.abs((v / row) % 1.0 - 0.5) * 2.0 <= cover
                self.lv_refl[m] = rx.uniform(0.12, 0.42)  # dry stubble is dark, green leaves bright
                self.lv_crop[m] = True
            self.lv_h[m] = np.maximum(self.lv_h[m], hf[m])
            self.lv_mu[m] = U(2.0, 5.0) if crop else U(3.0, 8.0)
            if crop:
                self.kind[m] = _SOIL
        self.lv_h[self.kind == _WATERK] = 0.0

    # -- power line ----------------------------------------------------------------------------------------

    def _power_line(self):
        rng, U, S = self.rng, self.U, self.S
        if self.roads:
            r = self.roads[int(rng.integers(len(self.roads)))]
            line, off = r["line"], (r["width"] / 2 + r["walk"] + U(1.5, 4.0)) * rng.choice((-1.0, 1.0))
        else:
            line = _Polyline.random(rng, (U(0.3 * S, 0.7 * S), U(0.3 * S, 0.7 * S)), U(0, math.pi), (S / 2 + _MARGIN) * 1.6, 0.0)
            off = 0.0
        span = U(35.0, 55.0)
        hp = U(8.0, 12.0)
        lat = np.array([-1.0, 0.0, 1.0]) * U(0.6, 1.2)
        heights = [hp - 0.3] * 3
        if rng.random() < 0.5:
            lat = np.append(lat, 0.0)
            heights.append(hp - U(1.2, 2.0))
        poles = []
        for u in np.arange(U(0, span), line.cum[-1], span):
            x, y, a = line.point(u)
            px, py = float(x - off * math.sin(a)), float(y + off * math.cos(a))
            if -_MARGIN + 1 < px < S + _MARGIN - 1 and -_MARGIN + 1 < py < S + _MARGIN - 1:
                poles.append((px, py, float(a)))
        # poles (class 1; thin, rarely hit)
        for px, py, a in poles:
            rr = U(0.12, 0.2)
            win = self.og.window(px - rr, px + rr, py - rr, py + rr)
            if win is not None:
                sl, X, Y = win
                m = np.hypot(X - px, Y - py) <= rr
                self._paint(sl, m, float(self.zg(px, py)) + hp + 0.3, self._new_object(UNCLASSIFIED, U(0.2, 0.4), U(0.2, 0.4)))
        sag = U(0.3, 1.5)
        refl = U(0.1, 0.3)
        for (x0, y0, a0), (x1, y1, a1) in zip(poles[:-1], poles[1:]):
            z0, z1 = float(self.zg(x0, y0)), float(self.zg(x1, y1))
            for dl, hz in zip(lat, heights):
                ax0, ay0 = x0 - dl * math.sin(a0), y0 + dl * math.cos(a0)
                ax1, ay1 = x1 - dl * math.sin(a1), y1 + dl * math.cos(a1)
                L = math.hypot(ax1 - ax0, ay1 - ay0)
                c = L * L / (8 * sag)
                for _ in range(20):  # catenary parameter for the sag: c (cosh(L / 2c) - 1) = sag
                    c = (L / 2) / math.acosh(1 + sag / c)
                self.wires.append((ax0, ay0, ax1, ay1, z0 + hz, z1 + hz, c, sag, refl))


# ------------------------------------------------------------------------------------------------------------
# Scan
# ------------------------------------------------------------------------------------------------------------


def _pulses(rng, S, density, z_nom, reach_lo, reach_hi, max_angle):
    """Pulses of one or two flight lines over the tile: origin O (P, 3), unit direction d (P, 3), etc."""
    n_lines = 1 if rng.random() < 0.65 else 2
    H = rng.uniform(800.0, 2000.0)
    v = rng.uniform(50.0, 75.0)
    phi0 = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        phi0 = round(phi0 / (math.pi / 2)) * (math.pi / 2)
    zigzag = rng.random() < 0.3
    tmax = math.tan(math.radians(max_angle))
    t0 = rng.uniform(3.0e8, 4.2e8)
    psid = int(rng.integers(1, 60000))
    out = []
    C = np.array([S / 2, S / 2])
    for li in range(n_lines):
        phi = phi0 if li == 0 else phi0 + (math.pi if rng.random() < 0.7 else math.pi / 2)
        f = np.array([math.cos(phi), math.sin(phi)])
        r = np.array([math.sin(phi), -math.cos(phi)])  # right of the flight direction
        th_c = math.radians(rng.uniform(-0.8, 0.8) * max_angle)
        c_tile = H * math.tan(th_c)
        # margin across track: rays reaching heights between the lowest and highest surface
        mc = max(reach_lo, reach_hi) * (abs(math.tan(th_c)) + S / (2 * H)) + 1.5
        corners = np.array([[0, 0], [S, 0], [0, S], [S, S]], np.float64) - C
        ca = corners @ f
        cc = corners @ r
        a_min, a_max = ca.min() - 1.5, ca.max() + 1.5
        c_min, c_max = c_tile + cc.min() - mc, c_tile + cc.max() + mc
        half_sw = H * tmax
        c_min, c_max = max(c_min, -half_sw), min(c_max, half_sw)
        if c_max <= c_min:
            continue
        rho = density / n_lines
        # spacing across / along the scan lines: near-square, or (oscillating mirrors at a high pulse rate,
        # thinned deliveries) lines several times further apart than the pulses along them
        k_an = rng.uniform(0.8, 1.25) if rng.random() < 0.7 else \
            float(np.exp(rng.uniform(np.log(1.25), np.log(4.0))))
        da, dc = k_an / math.sqrt(rho), 1.0 / (k_an * math.sqrt(rho))
        a_k = a_min - da + (np.arange(int((a_max - a_min) / da) + 3) + rng.uniform(0, 1)) * da
        c_j = c_min + (np.arange(int((c_max - c_min) / dc) + 1) + rng.uniform(0, 1)) * dc
        K, J = a_k.size, c_j.size
        c = c_j[None, :] + rng.normal(0, 0.05 * dc, (K, J))
        frac = (c + half_sw) / (2 * half_sw)  # time fraction within the sweep
        forward = np.ones((K, 1), bool)
        if zigzag:
            forward = (np.arange(K) % 2 == 0)[:, None]
            frac = np.where(forward, frac, 1.0 - frac)
        a = a_k[:, None] + da * frac + rng.normal(0, 0.03 * da, (K, J))
        time = t0 + li * rng.uniform(200.0, 3000.0) + (a_k[:, None] - a_min) / v + frac * (da / v)
        order = np.argsort(time, axis=None, kind="stable")
        a, c, time = a.ravel()[order], c.ravel()[order], time.ravel()[order]
        fw = np.broadcast_to(forward, (K, J)).ravel()[order]
        ground = C[None, :] + a[:, None] * f[None, :] + (c - c_tile)[:, None] * r[None, :]
        keep = (ground[:, 0] > -mc) & (ground[:, 0] < S + mc) & (ground[:, 1] > -mc) & (ground[:, 1] < S + mc)
        a, c, time, fw = a[keep], c[keep], time[keep], fw[keep]
        theta = np.arctan2(c, H)
        O = np.empty((a.size, 3))
        O[:, :2] = C[None, :] + a[:, None] * f[None, :] - c_tile * r[None, :]
        O[:, 2] = z_nom + H
        d = np.empty((a.size, 3))
        d[:, :2] = np.sin(theta)[:, None] * r[None, :]
        d[:, 2] = -np.cos(theta)
        edge = np.abs(c) >= half_sw - dc
        out.append(dict(O=O, d=d, angle=np.degrees(theta), time=time, line=np.full(a.size, li),
                        sdir=fw.astype(np.uint8), edge=edge.astype(np.uint8), psid=psid + li))
    keys = ("O", "d", "angle", "time", "line", "sdir", "edge")
    P = {k: np.concatenate([o[k] for o in out]) for k in keys}
    P["psid"] = np.concatenate([np.full(o["O"].shape[0], o["psid"]) for o in out]).astype(np.uint16)
    P["H"] = H
    return P


def _trace_terrain(sc, O, d):
    """Range to the terrain along each ray (bisection on height above the DEM)."""
    cz = -d[:, 2]
    gmin, gmax = float(sc.G.min()) - 0.5, float(sc.G.max()) + 0.5
    lo = (O[:, 2] - gmax) / cz
    hi = (O[:, 2] - gmin) / cz
    for _ in range(26):
        t = 0.5 * (lo + hi)
        p = O + t[:, None] * d
        above = p[:, 2] > sc.zg(p[:, 0], p[:, 1])
        lo = np.where(above, t, lo)
        hi = np.where(above, hi, t)
    return hi


def _trace_objects(sc, O, d, t_g):
    """First hit of each ray with the object raster (top/bottom heights) above the terrain hit."""
    og = sc.og
    P = O.shape[0]
    t_obj = np.full(P, np.inf)
    if not np.isfinite(sc.top).any():
        return t_obj
    # coarse max-top raster (4 m blocks), dilated by the horizontal reach of the rays
    blk = max(1, int(round(4.0 / og.cell)))
    nb = int(math.ceil(og.n / blk))
    padded = np.full((nb * blk, nb * blk), -np.inf, np.float32)
    padded[: og.n, : og.n] = sc.top
    coarse = padded.reshape(nb, blk, nb, blk).max(axis=(1, 3))
    zmax = float(np.max(sc.top[np.isfinite(sc.top)]))
    tan_max = float(np.max(np.hypot(d[:, 0], d[:, 1]) / -d[:, 2]))
    reach = int(math.ceil((zmax - float(sc.G.min())) * tan_max / (blk * og.cell))) + 1
    reach = min(reach, 8)
    dil = coarse.copy()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            src = coarse[max(0, -dy): nb - max(0, dy), max(0, -dx): nb - max(0, dx)]
            dst = dil[max(0, dy): nb - max(0, -dy), max(0, dx): nb - max(0, -dx)]
            np.maximum(dst, src, out=dst)
    pg = O + t_g[:, None] * d
    bx = np.clip(np.floor((pg[:, 0] - og.lo) / (blk * og.cell)).astype(np.int64), 0, nb - 1)
    by = np.clip(np.floor((pg[:, 1] - og.lo) / (blk * og.cell)).astype(np.int64), 0, nb - 1)
    z_start = dil[by, bx].astype(np.float64) + 0.05
    cand = np.flatnonzero(z_start > pg[:, 2])
    if cand.size == 0:
        return t_obj
    cz = -d[:, 2]
    tanth = np.hypot(d[:, 0], d[:, 1]) / cz
    dz = np.clip(0.8 * og.cell / np.maximum(tanth, 1e-6), 0.05, 0.4)
    nk = np.ceil(np.maximum(z_start - pg[:, 2], 0.0) / dz).astype(np.int64) + 1
    cand = cand[np.argsort(nk[cand], kind="stable")]
    top, bot = sc.top, sc.bot
    B = 4096
    for s0 in range(0, cand.size, B):
        idx = cand[s0: s0 + B]
        K = int(nk[idx].max()) + 1
        k = np.arange(K)[None, :]
        z = np.maximum(z_start[idx, None] - k * dz[idx, None], pg[idx, 2:3])
        t = (O[idx, 2:3] - z) / cz[idx, None]
        x = O[idx, 0:1] + t * d[idx, 0:1]
        y = O[idx, 1:2] + t * d[idx, 1:2]
        ix, iy, inside = og.index(x, y)
        blocked = inside & (z <= top[iy, ix]) & (z >= bot[iy, ix])
        hit = blocked.any(axis=1)
        if not hit.any():
            continue
        kk = np.argmax(blocked, axis=1)[hit]
        rows = idx[hit]
        zu = np.where(kk > 0, z[hit, np.maximum(kk - 1, 0)], z_start[rows] + 0.1)
        zb = z[hit, kk]
        for _ in range(10):
            zm = 0.5 * (zu + zb)
            tm = (O[rows, 2] - zm) / cz[rows]
            ix, iy, inside = og.index(O[rows, 0] + tm * d[rows, 0], O[rows, 1] + tm * d[rows, 1])
            bl = inside & (zm <= top[iy, ix]) & (zm >= bot[iy, ix])
            zb = np.where(bl, zm, zb)
            zu = np.where(bl, zu, zm)
        t_obj[rows] = (O[rows, 2] - zb) / cz[rows]
    return t_obj


class _Index2D:
    """Points binned in a 2-D grid for box queries."""

    def __init__(self, x, y, cell=2.0):
        self.cell = cell
        self.x0, self.y0 = float(x.min()) - 1, float(y.min()) - 1
        ix = np.floor((x - self.x0) / cell).astype(np.int64)
        iy = np.floor((y - self.y0) / cell).astype(np.int64)
        self.nx = int(ix.max()) + 1
        self.ny = int(iy.max()) + 1
        key = iy * self.nx + ix
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    def query(self, cx, cy, rad):
        i0 = max(int(math.floor((cx - rad - self.x0) / self.cell)), 0)
        i1 = min(int(math.floor((cx + rad - self.x0) / self.cell)), self.nx - 1)
        j0 = max(int(math.floor((cy - rad - self.y0) / self.cell)), 0)
        j1 = min(int(math.floor((cy + rad - self.y0) / self.cell)), self.ny - 1)
        if i1 < i0 or j1 < j0:
            return np.empty(0, np.int64)
        rows = np.arange(j0, j1 + 1) * self.nx
        lo = np.searchsorted(self.keys, rows + i0, side="left")
        hi = np.searchsorted(self.keys, rows + i1, side="right")
        n = hi - lo
        if n.sum() == 0:
            return np.empty(0, np.int64)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        return self.order[np.arange(n.sum()) + starts]


def _crown_intervals(sc, O, d, t_g, t_solid):
    """Porous intervals (pulse, t_in, t_out, mu, reflectance) of the rays through crowns and low vegetation."""
    cz = -d[:, 2]
    s = d[:, :2] / d[:, 2:3]  # xy change per metre of height (d_z < 0)
    g = O[:, :2] + t_g[:, None] * d[:, :2]
    zgp = O[:, 2] - t_g * cz
    out = []
    cr = sc.crowns
    if len(cr):
        idx2 = _Index2D(g[:, 0], g[:, 1])
        smean = s.mean(axis=0)
        sdev = float(np.max(np.hypot(s[:, 0] - smean[0], s[:, 1] - smean[1])))
        smax = float(np.max(np.hypot(s[:, 0], s[:, 1])))
        for shape, cx, cy, czc, a, b, c, yaw, mu, refl in cr:
            if shape == 0:
                zlo, zhi, R = czc - c, czc + c, max(a, b)
            else:
                zlo, zhi, R = czc - c, czc, a
            z0 = float(sc.zg(cx, cy))
            hm = 0.5 * (zlo + zhi) - z0
            qx, qy = cx - hm * smean[0], cy - hm * smean[1]
            rad = R + 0.5 * (zhi - zlo) * smax + sdev * max(abs(hm), 1.0) + 1.0 + 2.0 * smax
            cand = idx2.query(qx, qy, rad)
            if cand.size == 0:
                continue
            gs, ss, zz = g[cand], s[cand], zgp[cand]
            if shape == 0:
                ex = gs[:, 0] - cx + (czc - zz) * ss[:, 0]
                ey = gs[:, 1] - cy + (czc - zz) * ss[:, 1]
                co, si = math.cos(yaw), math.sin(yaw)
                eu, ev = ex * co + ey * si, -ex * si + ey * co
                su, sv = ss[:, 0] * co + ss[:, 1] * si, -ss[:, 0] * si + ss[:, 1] * co
                A = su * su / (a * a) + sv * sv / (b * b) + 1.0 / (c * c)
                Bq = 2.0 * (eu * su / (a * a) + ev * sv / (b * b))
                Cq = eu * eu / (a * a) + ev * ev / (b * b) - 1.0
                disc = Bq * Bq - 4 * A * Cq
                ok = disc > 0
                sq = np.sqrt(np.maximum(disc, 0))
                z_lo = czc + (-Bq - sq) / (2 * A)
                z_hi = czc + (-Bq + sq) / (2 * A)
            else:
                k = a / c
                e0x = gs[:, 0] - cx + (czc - zz) * ss[:, 0]
                e0y = gs[:, 1] - cy + (czc - zz) * ss[:, 1]
                A = ss[:, 0] ** 2 + ss[:, 1] ** 2 - k * k
                Bq = -2.0 * (e0x * ss[:, 0] + e0y * ss[:, 1])
                Cq = e0x * e0x + e0y * e0y
                disc = Bq * Bq - 4 * A * Cq
                sq = np.sqrt(np.maximum(disc, 0))
                Ad = np.where(np.abs(A) < 1e-12, -1e-12, A)
                r1 = np.where(disc >= 0, (-Bq - sq) / (2 * Ad), 0.0)
                r2 = np.where(disc >= 0, (-Bq + sq) / (2 * Ad), 0.0)
                bp = np.sort(np.stack([np.zeros_like(r1), np.full_like(r1, c), np.clip(r1, 0, c), np.clip(r2, 0, c)], 1), axis=1)
                w_start = np.full(r1.shape, np.inf)
                w_end = np.full(r1.shape, -np.inf)
                for j in range(3):
                    wa, wb = bp[:, j], bp[:, j + 1]
                    wm = 0.5 * (wa + wb)
                    inside = (np.hypot(e0x - wm * ss[:, 0], e0y - wm * ss[:, 1]) <= k * wm) & (wb > wa)
                    w_start = np.where(inside, np.minimum(w_start, wa), w_start)
                    w_end = np.where(inside, np.maximum(w_end, wb), w_end)
                ok = w_end > w_start
                z_lo, z_hi = czc - w_end, czc - np.where(ok, w_start, 0.0)
            if not ok.any():
                continue
            p = cand[ok]
            ti = (O[p, 2] - z_hi[ok]) / cz[p]
            to = np.minimum((O[p, 2] - z_lo[ok]) / cz[p], t_solid[p])
            good = to - ti > 1e-3
            if good.any():
                p = p[good]
                out.append((p, ti[good], to[good], np.full(p.size, mu), np.full(p.size, refl)))
    # low vegetation layer over the terrain (only where the ray reaches the terrain)
    lvh = sc.dem.nearest(sc.lv_h, g[:, 0], g[:, 1]).astype(np.float64)
    lvm = sc.dem.nearest(sc.lv_mu, g[:, 0], g[:, 1]).astype(np.float64)
    m = (lvh > 0.03) & (t_solid >= t_g - 1e-6)
    if m.any():
        p = np.flatnonzero(m)
        out.append((p, t_g[p] - lvh[p] / cz[p], t_g[p], lvm[p],
                    sc.dem.nearest(sc.lv_refl, g[p, 0], g[p, 1]).astype(np.float64)))
    if not out:
        e = np.empty(0)
        return np.empty(0, np.int64), e, e, e, e
    return tuple(np.concatenate(col) for col in zip(*out))


def _wire_events(sc, rng, O, d, t_g, t_solid, H):
    """Wire returns (pulse, range, reflectance): rays passing within the footprint of a conductor."""
    wires = sc.wires
    if not len(wires):
        e = np.empty(0)
        return np.empty(0, np.int64), e, e
    cz = -d[:, 2]
    s = d[:, :2] / d[:, 2:3]
    g = O[:, :2] + t_g[:, None] * d[:, :2]
    zgp = O[:, 2] - t_g * cz
    rfp = 0.5 * rng.uniform(0.25e-3, 0.5e-3) * H + 0.02  # footprint radius
    p_hit = rng.uniform(0.5, 0.85)
    smax = float(np.max(np.hypot(s[:, 0], s[:, 1])))
    out = []
    for x0, y0, x1, y1, z0, z1, ca, sag, refl in wires:
        L = math.hypot(x1 - x0, y1 - y0)
        ex, ey = (x1 - x0) / L, (y1 - y0) / L
        reach = (max(z0, z1) - float(zgp.min()) + 2.0) * smax + 1.0
        near = np.flatnonzero((g[:, 0] > min(x0, x1) - reach) & (g[:, 0] < max(x0, x1) + reach)
                              & (g[:, 1] > min(y0, y1) - reach) & (g[:, 1] < max(y0, y1) + reach))
        if near.size == 0:
            continue
        gs, ss, zz = g[near], s[near], zgp[near]
        z = np.full(near.size, 0.5 * (z0 + z1))
        for _ in range(5):
            px, py = gs[:, 0] + (z - zz) * ss[:, 0], gs[:, 1] + (z - zz) * ss[:, 1]
            u = np.clip((px - x0) * ex + (py - y0) * ey, 0.0, L)
            z = z0 + (z1 - z0) * u / L - (sag - ca * (np.cosh((u - L / 2) / ca) - 1.0))
        px, py = gs[:, 0] + (z - zz) * ss[:, 0], gs[:, 1] + (z - zz) * ss[:, 1]
        u = (px - x0) * ex + (py - y0) * ey
        dperp = -(px - x0) * ey + (py - y0) * ex
        tw = (O[near, 2] - z) / cz[near]
        hit = (u >= 0) & (u <= L) & (np.abs(dperp) < rfp) & (tw < t_solid[near] - 0.3)
        hit &= rng.random(near.size) < p_hit * (1.0 - 0.5 * np.abs(dperp) / rfp)
        if hit.any():
            out.append((near[hit], tw[hit], np.full(int(hit.sum()), refl)))
    if not out:
        e = np.empty(0)
        return np.empty(0, np.int64), e, e
    return tuple(np.concatenate(col) for col in zip(*out))


def _pad_by_pulse(p, cols, pad_values):
    """Group flat per-pulse items into padded [n_rows, M] arrays; returns rows' pulse ids and the arrays."""
    order = np.lexsort((cols[0], p))
    p = p[order]
    cols = [c[order] for c in cols]
    up, start, cnt = np.unique(p, return_index=True, return_counts=True)
    M = int(cnt.max())
    rank = np.arange(p.size) - np.repeat(start, cnt)
    row = np.repeat(np.arange(up.size), cnt)
    out = []
    for c, pv in zip(cols, pad_values):
        a = np.full((up.size, M), pv, np.float64)
        a[row, rank] = c
        out.append(a)
    return up, out


def _simulate_returns(rng, P, t_solid, porous, wires, dead_zone, p_stop):
    """Returns of each pulse as flat arrays: pulse, range, type (0 solid, 1 porous, 2 wire), refl, energy share."""
    ip, ia, ib, imu, irefl = porous
    row_of = np.full(P, -1, np.int64)
    if ip.size:
        up, (A, B, MU, RF) = _pad_by_pulse(ip, [ia, ib, imu, irefl], [_PAD, _PAD, 0.0, 0.0])
        row_of[up] = np.arange(up.size)
        bp = np.concatenate([A, B], axis=1)
        dl = np.concatenate([MU, -MU], axis=1)
        o = np.argsort(bp, axis=1, kind="stable")
        bp = np.take_along_axis(bp, o, 1)
        slope = np.cumsum(np.take_along_axis(dl, o, 1), axis=1)
        slope = np.where(np.abs(slope) < 1e-9, 0.0, slope)
        seg = slope[:, :-1] * np.diff(bp, axis=1)
        tau_bp = np.concatenate([np.zeros((bp.shape[0], 1)), np.cumsum(seg, axis=1)], axis=1)
    wp, wt, wr = wires
    wrow_of = np.full(P, -1, np.int64)
    if wp.size:
        wup, (WT, WR) = _pad_by_pulse(wp, [wt, wr], [np.inf, 0.0])
        wrow_of[wup] = np.arange(wup.size)

    s_cur = np.full(P, -np.inf)
    energy = np.ones(P)
    alive = np.ones(P, bool)
    rec = []
    for _ in range(_MAX_RETURNS):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        n = idx.size
        cur = s_cur[idx]
        # next porous event
        sp = np.full(n, np.inf)
        prf = np.zeros(n)
        rows = row_of[idx]
        hv = rows >= 0
        if hv.any():
            r_ = rows[hv]
            c = np.where(np.isfinite(cur[hv]), cur[hv], -_PAD)
            bpr, tbr, slr = bp[r_], tau_bp[r_], slope[r_]
            k = (bpr <= c[:, None]).sum(axis=1)
            km = np.maximum(k - 1, 0)
            ar = np.arange(r_.size)
            tau_c = np.where(k > 0, tbr[ar, km] + slr[ar, km] * (c - bpr[ar, km]), 0.0)
            target = tau_c + rng.exponential(1.0, r_.size)
            kk = np.argmax(tbr >= target[:, None], axis=1)
            found = tbr[ar, -1] >= target
            kk1 = np.maximum(kk - 1, 0)
            spv = bpr[ar, kk1] + (target - tbr[ar, kk1]) / np.maximum(slr[ar, kk1], 1e-12)
            spv = np.where(found & (kk > 0), np.maximum(spv, c), np.inf)
            sp[hv] = spv
            # reflectance of the densest interval at the event
            inside = (A[r_] <= spv[:, None]) & (B[r_] >= spv[:, None])
            j = np.argmax(np.where(inside, MU[r_], -1.0), axis=1)
            prf[hv] = RF[r_, j]
        # next wire event
        sw = np.full(n, np.inf)
        wrf = np.zeros(n)
        wrows = wrow_of[idx]
        hw = wrows >= 0
        if hw.any():
            wt_ = WT[wrows[hw]]
            wt_ = np.where(wt_ >= cur[hw, None], wt_, np.inf)
            j = np.argmin(wt_, axis=1)
            sw[hw] = wt_[np.arange(j.size), j]
            wrf[hw] = WR[wrows[hw], j]
        ss = np.where(t_solid[idx] >= cur, t_solid[idx], np.inf)
        ev = np.minimum(np.minimum(sp, sw), ss)
        typ = np.where(ev == ss, 0, np.where(ev == sw, 2, 1))
        none = ~np.isfinite(ev)
        alive[idx[none]] = False
        keep = ~none
        idx, ev, typ = idx[keep], ev[keep], typ[keep]
        refl = np.where(typ == 1, prf[keep], wrf[keep])
        frac = np.where(typ == 0, 1.0, np.where(typ == 1, rng.uniform(0.2, 0.55, idx.size), rng.uniform(0.05, 0.25, idx.size)))
        share = energy[idx] * frac
        rec.append((idx, ev, typ, refl, share))
        energy[idx] *= 1.0 - frac
        s_cur[idx] = ev + dead_zone
        stop = (typ == 0) | (energy[idx] < 0.1) | ((typ == 1) & (rng.random(idx.size) < p_stop))
        alive[idx[stop]] = False
    cols = [np.concatenate(c) for c in zip(*rec)] if rec else [np.empty(0)] * 5
    return cols[0].astype(np.int64), cols[1], cols[2].astype(np.int64), cols[3], cols[4]


def _merge_low_echoes(rp, rs, typ, refl, share, t_solid, on_obj, O, d, sc, merge_m):
    """A porous echo less than merge_m (range) before the terrain behind it (stubble, grass, a young crop) is not
    resolved from the soil's: the sensor records one return between the two, weighted by their echo energies, as
    bright as both together. Hence real farmland's crop points a few cm above the ground and about as bright as
    the soil, not a dark layer apart from it. Returns (range, reflectance, energy share) with those merged."""
    m = (typ == 1) & ~on_obj[rp] & (t_solid[rp] - rs < merge_m)
    if not m.any():
        return rs, refl, share
    o = np.lexsort((rs, rp))  # the pulse's returns in range order: energy left when each came
    so = share[o]
    cs = np.cumsum(so)
    first = np.r_[True, rp[o][1:] != rp[o][:-1]]
    before = np.empty_like(share)
    before[o] = cs - so - np.maximum.accumulate(np.where(first, cs - so, 0.0))
    i = np.flatnonzero(m)
    rest = np.clip(1.0 - before[i] - share[i], 0.0, None)  # what passes the plants reaches the soil
    hit = O[rp[i]] + t_solid[rp[i], None] * d[rp[i]]
    w_c, w_s = share[i] * refl[i], rest * sc.dem.nearest(sc.refl, hit[:, 0], hit[:, 1])
    rs, refl, share = rs.copy(), refl.copy(), share.copy()
    rs[i] = (w_c * rs[i] + w_s * t_solid[rp[i]]) / np.maximum(w_c + w_s, 1e-12)
    share[i] = share[i] + rest
    refl[i] = (w_c + w_s) / np.maximum(share[i], 1e-12)
    return rs, refl, share


# ------------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------------


def generate_tile(seed: int, size_m=100.0, density=8.0, *, scene=None, water=None, power_line=None,
                  max_scan_angle=20.0, origin=None, return_hag=False, single_return=False):
    """One generated airborne LiDAR tile (``size_m`` x ``size_m`` metres) with ASPRS labels.

    seed: the tile depends only on the arguments. density: emitted pulses per m^2, i.e. first returns per m^2
    (less over water, which drops most returns); all returns come to about 1.05-1.5x that, up to ~2x in
    forests; 2..20 is the realistic range. size_m: 50-250 m is the practical range (a 100 m tile at density
    8 takes about 0.5-2 s and 100-200 MB; time and memory grow with the area). scene: one of
    :data:`SCENES` or None (random). water: None (random), True, False, ``"river"`` or ``"pond"``; a river
    gets a bridge where a road crosses it. power_line: None (random), True or False. max_scan_angle: degrees
    either side of nadir. origin: (x0, y0) of the tile's lower-left corner in projected metres; by default
    a seed-dependent offset near (650000, 6860000) on a ``size_m`` grid. return_hag: also return
    ``height_above_ground`` (float32, metres above the generated terrain). single_return: a sensor that records
    one return per pulse, the first surface hit (every point return 1 of 1; canopies then show only their tops).

    Returns a dict of NumPy arrays, one row per return, ordered by gps_time then return number: x, y, z
    (float64, metres, rounded to 0.01), intensity (uint16), return_number, number_of_returns (uint8,
    1 <= return_number <= number_of_returns), scan_angle (float32 degrees, positive right of the flight
    direction), gps_time (float64 s), classification (uint8, codes of :data:`CLASSES`), plus the LAS
    dimensions point_source_id (uint16, one per flight line), scan_direction_flag and edge_of_flight_line
    (uint8).
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError("seed must be >= 0")
    size_m, density = float(size_m), float(density)
    if not size_m >= 10.0:
        raise ValueError(f"size_m must be >= 10, got {size_m}")
    if not 0.1 <= density <= 200.0:
        raise ValueError(f"density must be within [0.1, 200] pulses per m^2, got {density}")
    if not 1.0 <= float(max_scan_angle) <= 45.0:
        raise ValueError(f"max_scan_angle must be within [1, 45] degrees, got {max_scan_angle}")
    if water not in (None, True, False, "river", "pond"):
        raise ValueError(f"water must be None, True, False, 'river' or 'pond', got {water!r}")
    if scene is not None and scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES} or None, got {scene!r}")
    ss = np.random.SeedSequence([seed, 0x41_49_52_42])
    r_scene, r_scan, r_ret, r_noise, r_misc, r_extra = (np.random.default_rng(s) for s in ss.spawn(6))
    if scene is None:
        scene = SCENES[int(r_misc.choice(len(SCENES), p=_SCENE_P))]
    if origin is None:
        origin = (650000.0 + size_m * int(r_misc.integers(0, 200)), 6860000.0 + size_m * int(r_misc.integers(0, 200)))
    S = size_m
    sc = _Scene(r_scene, S, scene, water, power_line, r_extra)

    # --- scan --------------------------------------------------------------------------------------------
    inner = (sc.dem.axis() > 0) & (sc.dem.axis() < S)
    Gt = sc.G[np.ix_(inner, inner)]
    z_nom = float(np.median(Gt))
    top_fin = sc.top[np.isfinite(sc.top)]
    z_hi = max(float(Gt.max()), float(top_fin.max()) if top_fin.size else -np.inf,
               float((sc.crowns[:, 3] + sc.crowns[:, 6] * (sc.crowns[:, 0] == 0)).max()) if len(sc.crowns) else -np.inf)
    pl = _pulses(r_scan, S, density, z_nom, z_nom - float(Gt.min()), z_hi - z_nom, float(max_scan_angle))
    O, d = pl["O"], pl["d"]
    P = O.shape[0]
    cz = -d[:, 2]

    # --- first solid hit -----------------------------------------------------------------------------------
    t_g = _trace_terrain(sc, O, d)
    t_o = _trace_objects(sc, O, d, t_g)
    on_obj = t_o < t_g
    t_solid = np.where(on_obj, t_o, t_g)
    porous = _crown_intervals(sc, O, d, t_g, t_solid)
    wires = _wire_events(sc, r_ret, O, d, t_g, t_solid, pl["H"])
    dead_zone = r_ret.uniform(0.8, 1.6)
    p_stop = r_ret.uniform(0.15, 0.35)  # a porous return takes the whole pulse
    rp, rs, rtyp, rrefl, rshare = _simulate_returns(r_ret, P, t_solid, porous, wires, dead_zone, p_stop)
    rs, rrefl, rshare = _merge_low_echoes(rp, rs, rtyp, rrefl, rshare, t_solid, on_obj, O, d, sc,
                                          r_extra.uniform(0.3, 0.6))

    # --- positions, materials ------------------------------------------------------------------------------
    sigma = r_ret.uniform(0.015, 0.035)
    rs_true = rs
    rs = rs + r_ret.normal(0.0, sigma, rs.size)
    pos = O[rp] + rs[:, None] * d[rp]
    hag = pos[:, 2] - sc.zg(pos[:, 0], pos[:, 1])
    strip = r_ret.normal(0.0, 0.02, (2, 3))  # small systematic offset between flight lines
    pos += strip[pl["line"][rp]]
    x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
    cls = np.zeros(rp.size, np.uint8)
    cosang = np.ones(rp.size)
    solid = rtyp == 0
    obj = solid & on_obj[rp]
    ter = solid & ~on_obj[rp]
    # terrain
    kind = sc.dem.nearest(sc.kind, x[ter], y[ter])
    cls[ter] = np.where(kind == _WATERK, WATER, GROUND)
    rrefl[ter] = sc.dem.nearest(sc.refl, x[ter], y[ter])
    gxv, gyv = sc.dem.nearest(sc.Ggx, x[ter], y[ter]), sc.dem.nearest(sc.Ggy, x[ter], y[ter])
    dd = d[rp[ter]]
    cosang[ter] = np.abs(-gxv * dd[:, 0] - gyv * dd[:, 1] + dd[:, 2]) / np.sqrt(1 + gxv**2 + gyv**2)
    # objects (hit point nudged into the surface to read its cell)
    tin = rs[obj] + 0.02
    pin = O[rp[obj]] + tin[:, None] * d[rp[obj]]
    ix, iy, _ = sc.og.index(pin[:, 0], pin[:, 1])
    oid = sc.oid[iy, ix]
    oid = np.where(oid >= 0, oid, 0)
    wall = (sc.top[iy, ix] - z[obj]) > 0.25
    cls[obj] = sc.objects[oid, 0].astype(np.uint8) if len(sc.objects) else GROUND
    rrefl[obj] = np.where(wall, sc.objects[oid, 2], sc.objects[oid, 1]) if len(sc.objects) else 0.3
    ogx, ogy = sc.gx[iy, ix], sc.gy[iy, ix]
    do = d[rp[obj]]
    roof_cos = np.abs(-ogx * do[:, 0] - ogy * do[:, 1] + do[:, 2]) / np.sqrt(1 + ogx**2 + ogy**2)
    cosang[obj] = np.where(wall, np.maximum(np.hypot(do[:, 0], do[:, 1]), 0.05), roof_cos)
    # vegetation by height above the terrain; wires
    veg = rtyp == 1
    low = np.where(veg, hag < 0.1, False)
    if sc.lv_crop.any():  # a return off a crop plant is vegetation (3DEP: unclassified), not ground
        iv = np.flatnonzero(low)
        p0 = O[rp[iv]] + rs_true[iv, None] * d[rp[iv]]
        crop = sc.dem.nearest(sc.lv_crop, p0[:, 0], p0[:, 1]) & (p0[:, 2] - sc.zg(p0[:, 0], p0[:, 1]) >= 0.02)
        low[iv[crop]] = False
    cls[veg] = np.where(low[veg], GROUND, np.where(hag[veg] < 0.5, LOW_VEGETATION,
                                                   np.where(hag[veg] < 2.0, MEDIUM_VEGETATION, HIGH_VEGETATION)))
    cosang[veg] = r_ret.uniform(0.5, 1.0, int(veg.sum()))
    cls[rtyp == 2] = WIRE
    # water gives few returns: mostly near nadir
    p_water = r_ret.uniform(0.06, 0.2) + 0.6 * np.exp(-((pl["angle"][rp] / 4.0) ** 2))
    drop = (cls == WATER) & (r_ret.random(rp.size) > p_water)
    drop |= r_ret.random(rp.size) < 0.002  # random dropouts
    keep = ~drop

    gain = r_ret.uniform(0.7, 1.4)
    inten = _INTENSITY_SCALE * gain * rrefl * rshare * cosang**0.8 * np.exp(r_ret.normal(0, 0.12, rp.size))
    inten = inten + r_ret.normal(0, 6.0, rp.size)
    rp, rs, cls, inten = rp[keep], rs[keep], cls[keep], inten[keep]
    x, y, z, hag = x[keep], y[keep], z[keep], hag[keep]

    # --- noise: isolated returns far above the pulse's first return, or below the terrain (multipath) -------
    npulse_ret = np.bincount(rp, minlength=P)
    with_ret = np.flatnonzero(npulse_ret > 0)
    n_hi = max(1, int(r_noise.poisson(1.5e-4 * with_ret.size * r_noise.uniform(0.3, 3.0))))
    n_lo = max(1, int(r_noise.poisson(1.0e-4 * with_ret.size * r_noise.uniform(0.3, 3.0))))
    first_s = np.full(P, np.inf)
    np.minimum.at(first_s, rp, rs)
    last_s = np.full(P, -np.inf)
    np.maximum.at(last_s, rp, rs)
    # pulses whose ground point lies in the tile
    pg = O + t_g[:, None] * d
    in_tile = (pg[:, 0] >= 1) & (pg[:, 0] < S - 1) & (pg[:, 1] >= 1) & (pg[:, 1] < S - 1)
    pool = with_ret[in_tile[with_ret]]
    if pool.size == 0:
        pool = with_ret
    nz_p = r_noise.choice(pool, size=min(pool.size, n_hi + n_lo), replace=False)
    hi_p, lo_p = nz_p[:n_hi], nz_p[n_hi:]
    lo_depth = r_noise.uniform(1.5, 30.0, lo_p.size)
    if r_noise.random() < 0.3:
        # a multipath burst (as IGN's artefact code 65: 1.4% of a real tile, tens of metres under its edge):
        # 0.2-2% of the pulses within 10-40 m of a spot get a return 1.5-80 m beyond the terrain
        spot, radius = r_noise.uniform(0.0, S, 2), r_noise.uniform(10.0, 40.0)
        disc = pool[np.hypot(pg[pool, 0] - spot[0], pg[pool, 1] - spot[1]) < radius]
        n_burst = min(disc.size, int(with_ret.size * r_noise.uniform(0.002, 0.02)))
        burst = r_noise.choice(disc, n_burst, replace=False)
        lo_p = np.concatenate([lo_p, burst])
        lo_depth = np.concatenate([lo_depth, r_noise.uniform(1.5, 80.0, burst.size)])
    ns = np.concatenate([first_s[hi_p] - r_noise.uniform(15.0, 300.0, hi_p.size) / cz[hi_p],
                         np.maximum(last_s[lo_p], t_g[lo_p]) + lo_depth / cz[lo_p]])
    npp = np.concatenate([hi_p, lo_p])
    npos = O[npp] + ns[:, None] * d[npp]
    rp = np.concatenate([rp, npp])
    rs = np.concatenate([rs, ns])
    cls = np.concatenate([cls, np.full(npp.size, NOISE, np.uint8)])
    inten = np.concatenate([inten, gain * r_noise.uniform(5.0, 150.0, npp.size)])
    x, y, z = (np.concatenate([a, npos[:, k]]) for k, a in enumerate((x, y, z)))
    hag = np.concatenate([hag, npos[:, 2] - sc.zg(npos[:, 0], npos[:, 1])])

    # --- order, return numbers, crop -------------------------------------------------------------------------
    order = np.lexsort((rs, rp))
    rp, cls, inten, x, y, z, hag = rp[order], cls[order], inten[order], x[order], y[order], z[order], hag[order]
    cnt = np.bincount(rp, minlength=P)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    ret_num = np.arange(rp.size) - start[rp] + 1
    n_ret = cnt[rp]
    if single_return:
        first = np.flatnonzero(ret_num == 1)
        rp, cls, inten, x, y, z, hag = rp[first], cls[first], inten[first], x[first], y[first], z[first], hag[first]
        ret_num = n_ret = np.ones(first.size, np.int64)
    inside = (x >= 0) & (x < S) & (y >= 0) & (y < S)
    sel = np.flatnonzero(inside)
    rp = rp[sel]
    x0, y0 = float(origin[0]), float(origin[1])
    tile = {
        "x": np.round((x[sel] + x0) * 100.0) / 100.0,
        "y": np.round((y[sel] + y0) * 100.0) / 100.0,
        "z": np.round(z[sel] * 100.0) / 100.0,
        "intensity": np.clip(np.round(inten[sel]), 0, 65535).astype(np.uint16),
        "return_number": ret_num[sel].astype(np.uint8),
        "number_of_returns": n_ret[sel].astype(np.uint8),
        "scan_angle": pl["angle"][rp].astype(np.float32),
        "gps_time": pl["time"][rp].astype(np.float64),
        "classification": cls[sel].astype(np.uint8),
        "point_source_id": pl["psid"][rp].astype(np.uint16),
        "scan_direction_flag": pl["sdir"][rp].astype(np.uint8),
        "edge_of_flight_line": pl["edge"][rp].astype(np.uint8),
    }
    if return_hag:
        tile["height_above_ground"] = hag[sel].astype(np.float32)
    return tile


def write_tile_las(tile: dict, path, point_format=6):
    """Writes a tile from :func:`generate_tile` as LAS (LAS 1.4 for point formats 6-10, 1.2 below) or, when the
    path ends in .laz, LAZ; scales 0.01 m. Written to a temporary file in the same folder, then renamed."""
    import laspy

    path = os.fspath(path)
    pf = int(point_format)
    if pf not in (0, 1, 2, 3, 6, 7, 8):
        raise ValueError(f"point_format must be one of 0, 1, 2, 3, 6, 7, 8, got {pf}")
    header = laspy.LasHeader(point_format=pf, version="1.4" if pf >= 6 else "1.2")
    x, y, z = (np.asarray(tile[k], np.float64) for k in ("x", "y", "z"))
    header.scales = np.array([0.01, 0.01, 0.01])
    if x.size:
        header.offsets = np.array([math.floor(x.min() / 1000) * 1000, math.floor(y.min() / 1000) * 1000,
                                   math.floor(z.min() / 100) * 100], np.float64)
    header.generating_software = "sparseconv.data.airborne"
    header.system_identifier = "generated"
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    las.intensity = np.asarray(tile["intensity"], np.uint16)
    nr = np.asarray(tile["number_of_returns"], np.uint8)
    rn = np.asarray(tile["return_number"], np.uint8)
    cls = np.asarray(tile["classification"], np.uint8)
    if pf < 6:
        if nr.size and nr.max() > 7:
            raise ValueError(f"point format {pf} holds at most 7 returns per pulse; use point format 6")
        if cls.size and cls.max() > 31:
            raise ValueError(f"point format {pf} holds class codes up to 31; use point format 6")
    las.return_number = rn
    las.number_of_returns = nr
    las.classification = cls
    ang = np.asarray(tile["scan_angle"], np.float64)
    if pf >= 6:
        las.scan_angle = np.clip(np.round(ang / 0.006), -30000, 30000).astype(np.int16)
    else:
        las.scan_angle_rank = np.clip(np.round(ang), -90, 90).astype(np.int8)
    if "gps_time" in las.point_format.dimension_names:
        las.gps_time = np.asarray(tile["gps_time"], np.float64)
    for k in ("point_source_id", "scan_direction_flag", "edge_of_flight_line"):
        if k in tile:
            las[k] = np.asarray(tile[k])
    compress = path.lower().endswith(".laz")
    with atomic_output(path) as tmp:
        las.write(tmp, do_compress=compress)
    return path


def generate_tiles(out_dir, n_tiles, seed=0, size_m=100.0, density=8.0, suffix=".laz", progress=True, **kwargs):
    """Writes ``n_tiles`` tiles (tile_0000.laz, ...) into out_dir and returns their paths. Tile i is
    ``generate_tile(seed_i, size_m, density, **kwargs)`` with seed_i drawn from (seed, i), so a tile does not
    depend on how many are made. A tqdm progress bar shows when tqdm is installed and progress is true."""
    if suffix not in (".las", ".laz"):
        raise ValueError(f"suffix must be '.las' or '.laz', got {suffix!r}")
    os.makedirs(out_dir, exist_ok=True)
    it = range(int(n_tiles))
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="tiles", unit="tile")
        except ImportError:
            pass
    paths = []
    for i in it:
        tile_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint32)[0])
        tile = generate_tile(tile_seed, size_m=size_m, density=density, **kwargs)
        paths.append(write_tile_las(tile, os.path.join(out_dir, f"tile_{i:04d}{suffix}")))
    return paths
