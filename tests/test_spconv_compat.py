"""sparseconv.spconv on its own (no spconv needed): spconv's weight layout against torch's dense convolutions,
state_dict keys, SparseConvTensor (dense order, 2D, cache sharing), indice_key rules, SparseSequential's routing,
and a clear error for every spconv option that is not reproduced. tests/test_spconv_parity.py compares with the
real spconv."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseconv
import sparseconv.spconv.pytorch as spconv
from conftest import random_coords, random_feats, scatter_dense

SHAPE = (7, 6, 5)


def tensor(batch=2, shape=SHAPE, density=0.2, channels=3, seed=0, dtype=torch.float64):
    coords = random_coords(batch, shape, density, seed)
    feats = random_feats(coords.shape[0], channels, dtype, seed).requires_grad_(True)
    return spconv.SparseConvTensor(feats, coords, list(shape), batch), feats


def at(dense, indices):
    c = indices.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def seeded(layer, seed=0):
    """Non-trivial weights written through load_state_dict in spconv's layout (the path a checkpoint takes)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in layer.state_dict().items()}
    layer.double().load_state_dict(state, strict=True)
    return layer


# ------------------------------------------------------------------------------------------------------------
# Weight layout: spconv's [Cout, k0, k1, k2, Cin], checked against torch's dense ops on the densified input
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, d", [(3, 1), ((3, 1, 5), (1, 2, 1))])
def test_subm_layout_vs_conv3d(k, d):
    x, _ = tensor()
    layer = seeded(spconv.SubMConv3d(3, 4, k, dilation=d, padding=7, indice_key="s"))  # padding: ignored
    assert layer.weight.shape == (4, *((k,) * 3 if isinstance(k, int) else k), 3)
    y = layer(x)
    kk, dd = np.broadcast_to(k, 3), np.broadcast_to(d, 3)
    pad = tuple(int(a * (b - 1) // 2) for a, b in zip(dd, kk))
    ref = F.conv3d(x.dense(), layer.weight.permute(0, 4, 1, 2, 3), layer.bias, padding=pad, dilation=tuple(dd))
    assert torch.equal(y.indices, x.indices)
    torch.testing.assert_close(y.features, at(ref, y.indices))


def test_strided_and_inverse_layout_vs_dense():
    x, _ = tensor(shape=(9, 8, 7))
    down = seeded(spconv.SparseConv3d(3, 4, 3, stride=2, padding=1, indice_key="d"))
    up = seeded(spconv.SparseInverseConv3d(4, 2, 3, indice_key="d"), seed=1)
    y = down(x)
    ref = F.conv3d(x.dense(), down.weight.permute(0, 4, 1, 2, 3), down.bias, stride=2, padding=1)
    assert y.spatial_shape == list(ref.shape[2:])
    torch.testing.assert_close(y.features, at(ref, y.indices))
    z = up(y)
    assert torch.equal(z.indices, x.indices) and z.spatial_shape == x.spatial_shape
    # The inverse is conv_transpose3d with the strided conv's geometry; spconv's weight [Cout, k, Cin] is torch's
    # transposed-conv weight [Cin, Cout, k] permuted.
    ref = F.conv_transpose3d(y.dense(), up.weight.permute(4, 0, 1, 2, 3), up.bias, stride=2, padding=1,
                             output_padding=(0, 1, 0))
    torch.testing.assert_close(z.features, at(ref, z.indices))


def test_transposed_layout_vs_conv_transpose3d():
    x, _ = tensor()
    layer = seeded(spconv.SparseConvTranspose3d(3, 4, 3, stride=2, padding=1))
    y = layer(x)
    ref = F.conv_transpose3d(x.dense(), layer.weight.permute(4, 0, 1, 2, 3), layer.bias, stride=2, padding=1)
    assert y.spatial_shape == list(ref.shape[2:])
    torch.testing.assert_close(y.features, at(ref, y.indices))


@pytest.mark.parametrize("make", [lambda: spconv.SubMConv3d(3, 4, 1), lambda: spconv.SparseConv3d(3, 4, 1),
                                  lambda: spconv.SparseConvTranspose3d(3, 4, 1)])
def test_1x1_reads_weight_as_spconv_does(make):
    """spconv 2.3.8 computes features @ weight.view(Cin, Cout) for a 1x1 conv (no transpose of its [Cout, Cin]
    storage); checkpoints learnt their 1x1 weights that way."""
    x, _ = tensor()
    layer = seeded(make())
    y = layer(x)
    expected = x.replace_feature(x.features @ layer.weight.reshape(3, 4) + layer.bias)
    assert y.spatial_shape == x.spatial_shape
    torch.testing.assert_close(y.dense(), expected.dense())  # same sites, maybe in another order


def test_state_dict_keys_and_shapes_are_spconvs():
    model = spconv.SparseSequential(
        spconv.SubMConv3d(4, 16, 3, padding=1, bias=False, indice_key="subm1"), nn.BatchNorm1d(16), nn.ReLU(),
        spconv.SparseConv3d(16, 32, (3, 1, 3), stride=2, padding=1, record_voxel_count=True),
        spconv.SparseInverseConv3d(32, 8, (3, 1, 3), indice_key="x", bias=True),
        spconv.SubMConv2d(8, 2, 3), spconv.SparseMaxPool3d(2))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"0.weight": (16, 3, 3, 3, 4), "1.weight": (16,), "1.bias": (16,), "1.running_mean": (16,),
                      "1.running_var": (16,), "1.num_batches_tracked": (), "3.weight": (32, 3, 1, 3, 16),
                      "3.bias": (32,), "3.max_num_voxels_during_training": (1,), "4.weight": (8, 3, 1, 3, 32),
                      "4.bias": (8,), "5.weight": (2, 3, 3, 8), "5.bias": (2,)}


def test_seeded_initialisation_bounds():
    torch.manual_seed(0)
    layer = spconv.SparseConv3d(5, 7, 3)
    bound = 1 / (5 * 27) ** 0.5  # spconv's kaiming_uniform(a=sqrt(5)) on fan_in = Cin * K
    assert 0.8 * bound < layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


def test_record_voxel_count_tracks_the_largest_output():
    layer = spconv.SparseConv3d(3, 4, 3, stride=2, record_voxel_count=True).double()
    small, big = tensor(density=0.05)[0], tensor(density=0.4)[0]
    n_big = layer(big).indices.shape[0]
    layer(small)
    assert int(layer.max_num_voxels_during_training) == n_big


# ------------------------------------------------------------------------------------------------------------
# SparseConvTensor
# ------------------------------------------------------------------------------------------------------------


def test_dense_order_and_from_dense():
    x, feats = tensor()
    ref = scatter_dense(feats.detach(), x.indices, 2, SHAPE)
    assert torch.equal(x.dense(), ref) and x.dense().shape == (2, 3, *SHAPE)
    assert torch.equal(x.dense(channels_first=False), ref.permute(0, 2, 3, 4, 1))
    back = spconv.SparseConvTensor.from_dense(x.dense(channels_first=False))
    assert back.spatial_shape == list(SHAPE) and back.batch_size == 2
    assert torch.equal(back.dense(), ref)
    x.dense().sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))


def test_2d_tensor_and_layers_match_conv2d():
    g = torch.Generator().manual_seed(2)
    flat = torch.randperm(2 * 8 * 9, generator=g)[:40]
    idx = torch.stack([flat // 72, flat // 9 % 8, flat % 9], 1).int()
    x = spconv.SparseConvTensor(torch.randn(40, 3, dtype=torch.float64), idx, np.array([8, 9]), np.int64(2))
    assert x.indices is idx and x.spatial_shape == [8, 9] and x.dense().shape == (2, 3, 8, 9)
    layer = seeded(spconv.SparseConv2d(3, 4, 3, stride=2, padding=1))
    assert layer.weight.shape == (4, 3, 3, 3)
    y = layer(x)
    ref = F.conv2d(x.dense(), layer.weight.permute(0, 3, 1, 2), layer.bias, stride=2, padding=1)
    assert y.indices.shape[1] == 3 and y.spatial_shape == list(ref.shape[2:])
    c = y.indices.long()
    torch.testing.assert_close(y.features, ref[c[:, 0], :, c[:, 1], c[:, 2]])
    with pytest.raises(ValueError, match="input: SubMConv3d is a 3D layer, got a 2D SparseConvTensor"):
        spconv.SubMConv3d(3, 4, 3).double()(x)


def test_replace_feature_add_and_select_keep_the_right_cache():
    x, _ = tensor()
    y = spconv.SubMConv3d(3, 3, 3, indice_key="s").double()(x)
    z = y.replace_feature(y.features * 2)
    assert z.sparse_tensor.kmaps is x.sparse_tensor.kmaps and "s" in z.indice_dict
    torch.testing.assert_close((z + y).features, 3 * y.features)
    torch.testing.assert_close((y.features + z).features, 3 * y.features)
    torch.testing.assert_close(z.minus().features, -z.features)
    sub = z.select_by_index(torch.arange(0, z.features.shape[0], 2))
    assert len(sub.indice_dict) == 0 and torch.equal(sub.indices, z.indices[::2])
    with pytest.raises(ValueError, match="replace_feature"):
        z.features = z.features


# ------------------------------------------------------------------------------------------------------------
# indice_key: shared submanifold maps, inverse by key, indice_dict
# ------------------------------------------------------------------------------------------------------------


def test_indice_keys_share_maps_and_describe_them():
    x, _ = tensor(shape=(9, 8, 7))
    a, b = spconv.SubMConv3d(3, 3, 3, indice_key="subm1").double(), spconv.SubMConv3d(3, 3, 3, indice_key="subm1")
    y = b.double()(a(x))
    maps = [k for k in x.sparse_tensor.kmaps if isinstance(k, tuple) and k[0] == "subm"]
    assert len(maps) == 1, "the second SubMConv3d with the same key built its own map"
    down = spconv.SparseConv3d(3, 4, 3, stride=2, padding=1, indice_key="spconv2").double()(y)
    info = down.indice_dict
    assert set(info) == {"subm1", "spconv2"} and down.find_indice_pair("nope") is None
    s, d = info["subm1"], info["spconv2"]
    assert s.is_subm and s.ksize == [3, 3, 3] and torch.equal(s.out_indices, x.indices)
    assert not d.is_subm and torch.equal(d.indices, x.indices) and torch.equal(d.out_indices, down.indices)
    assert (d.spatial_shape, d.out_spatial_shape, d.stride, d.padding) == ([9, 8, 7], [5, 4, 4], [2] * 3, [1] * 3)
    with pytest.raises(ValueError, match="indice_key 'subm1': already used by a layer with geometry subm"):
        spconv.SubMConv3d(3, 3, 5, indice_key="subm1").double()(y)
    with pytest.raises(ValueError, match="indice_key 'subm1': already names the map of other sites"):
        spconv.SubMConv3d(4, 3, 3, indice_key="subm1").double()(down)


def test_inverse_finds_its_conv_by_key_also_on_a_rebuilt_tensor():
    x, _ = tensor(shape=(9, 8, 7))
    down = spconv.SparseConv3d(3, 4, 3, stride=2, padding=1, indice_key="spconv2").double()(x)
    rebuilt = spconv.SparseConvTensor(down.features * 1, down.indices.clone(), down.spatial_shape,
                                      down.batch_size, indice_dict=down.indice_dict)
    inverse = spconv.SparseInverseConv3d(4, 2, 3, indice_key="spconv2").double()
    assert torch.equal(inverse(rebuilt).indices, x.indices)
    torch.testing.assert_close(inverse(rebuilt).features, inverse(down).features)
    with pytest.raises(ValueError, match="indice_key 'spconv2': no SparseConv3d or pooling layer"):
        inverse(spconv.SparseConvTensor(down.features, down.indices, down.spatial_shape, down.batch_size))
    other = spconv.SparseConvTensor(down.features[:-1], down.indices[:-1], down.spatial_shape, 2,
                                    indice_dict=down.indice_dict)
    with pytest.raises(ValueError, match="not the output sites of the SparseConv3d"):
        inverse(other)
    with pytest.raises(TypeError, match="indice_dict: expected None or the indice_dict of a sparseconv.spconv"):
        spconv.SparseConvTensor(down.features, down.indices, down.spatial_shape, 2, indice_dict={"k": 1})


# ------------------------------------------------------------------------------------------------------------
# SparseSequential routing, as spconv's
# ------------------------------------------------------------------------------------------------------------


class Residual(spconv.SparseModule):
    def __init__(self):
        super().__init__()
        self.conv = spconv.SubMConv3d(3, 3, 3, indice_key="r")

    def forward(self, x):
        return x.replace_feature(self.conv(x).features + x.features)


def test_sequential_routes_like_spconv():
    x, _ = tensor(dtype=torch.float32)
    model = spconv.SparseSequential(Residual(), nn.BatchNorm1d(3), nn.ReLU(), spconv.ToDense(), nn.Flatten(),
                                    nn.Linear(3 * 7 * 6 * 5, 2))
    out = model(x)
    manual = model[0](x)
    manual = F.relu(model[1](manual.features))
    dense = spconv.SparseConvTensor(manual, x.indices, x.spatial_shape, 2).dense()
    torch.testing.assert_close(out, model[5](dense.flatten(1)))
    named = spconv.SparseSequential(conv=spconv.SubMConv3d(3, 3, 3), relu=nn.ReLU())
    named.add(spconv.SparseReLU())
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"] and len(named) == 3
    empty = spconv.SparseConvTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), [4, 4, 4], 1)
    assert spconv.SparseSequential(nn.BatchNorm1d(3))(empty).features.shape == (0, 3)  # skipped, as spconv


def test_sparse_batchnorm_and_relu_take_the_tensor():
    x, _ = tensor(dtype=torch.float32)
    bn, relu = spconv.SparseBatchNorm(3), spconv.SparseReLU()
    ref = nn.BatchNorm1d(3)
    torch.testing.assert_close(relu(bn(x)).features, F.relu(ref(x.features)))
    assert list(bn.state_dict()) == list(ref.state_dict())
    sparseconv.set_deterministic(True)  # our fixed-order batch norm, same result
    try:
        torch.testing.assert_close(bn(x).features, ref(x.features), rtol=1e-5, atol=1e-5)
    finally:
        sparseconv.set_deterministic(False)


# ------------------------------------------------------------------------------------------------------------
# What is not reproduced raises, naming it
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, match", [
    (lambda: spconv.SubMConv3d(3, 4, 3, algo="fast"), ValueError, "algo: expected None or a ConvAlgo"),
    (lambda: spconv.SparseConv3d(3, 4, 3, groups=2), ValueError, "groups: only 1 is supported"),
    (lambda: spconv.SubMConv3d(3, 4, 3, stride=2), ValueError, "stride: a submanifold conv keeps its input sites"),
    (lambda: spconv.SparseConv3d(3, 4, 1, padding=1), ValueError, "padding: a 1x1 SparseConv3d with stride 1"),
    (lambda: spconv.SparseConvTranspose3d(3, 4, 3, dilation=2), NotImplementedError, r"dilation=\[2, 2, 2\]"),
    (lambda: spconv.SparseInverseConv3d(3, 4, 1, indice_key="k"), NotImplementedError, "kernel_size: spconv"),
    (lambda: spconv.SubMConv3d(3, 4, (3, 3)), ValueError, "kernel_size: expected an int or 3 ints, got 2"),
    (lambda: spconv.SubMConv2d(3, 4, 2.5), TypeError, "kernel_size: expected an int or 2 ints"),
    (lambda: spconv.SubMConv3d.from_conv3d(nn.Conv3d(1, 1, 3)), NotImplementedError, "use sparseconv.nn"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2] * 3, 1,
                                     benchmark=True), NotImplementedError, "benchmark=True"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2] * 3, 1,
                                     enable_timer=True), NotImplementedError, "enable_timer=True"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2] * 3, 1,
                                     voxel_num=torch.ones(1)), NotImplementedError, "voxel_num"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4), [2] * 3, 1), TypeError,
     r"indices: expected dtype torch.int32 \(as spconv\), got torch.float32; pass indices.int\(\)"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 5, dtype=torch.int32), [2] * 4, 1),
     ValueError, r"indices: expected a tensor \[N, 4\]"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2, 2], 1),
     ValueError, "spatial_shape: expected 3 values"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [2] * 3, 1.5),
     TypeError, "batch_size: expected an int, got float"),
    (lambda: spconv.SparseConvTensor(torch.zeros(1, 1), torch.full((1, 4), 3, dtype=torch.int32), [2] * 3, 4),
     ValueError, "lies outside spatial_shape"),
    (lambda: spconv.SparseConvTensor.from_sparse_tensor(sparseconv.SparseTensor(torch.zeros(1, 1), torch.zeros(
        1, 4, dtype=torch.int32), (2, 2, 2)), 2), ValueError, "ndim: expected 3, or 2 for a tensor whose third"),
    (lambda: spconv.SubMConv4d, AttributeError, "spconv's SubMConv4d is not supported: only the 2D and 3D"),
    (lambda: spconv.JoinTable, AttributeError, "JoinTable is not supported: concatenate features"),
    (lambda: spconv.no_such_thing, AttributeError, "has no attribute 'no_such_thing'"),
])
def test_unsupported_raise_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_layers_refuse_other_inputs_and_add_input():
    x, _ = tensor()
    layer = spconv.SubMConv3d(3, 4, 3).double()
    with pytest.raises(TypeError, match="input: SubMConv3d expected a SparseConvTensor, got SparseTensor"):
        layer(x.sparse_tensor)
    with pytest.raises(NotImplementedError, match="add_input: spconv's fused residual add"):
        layer(x, add_input=x)
    with pytest.raises(TypeError, match="input: ToDense expected a SparseConvTensor, got Tensor"):
        spconv.ToDense()(x.features)


def test_algo_is_noted_once_and_ignored():
    from sparseconv.spconv import options

    options._noted.clear()
    x, _ = tensor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = seeded(spconv.SubMConv3d(3, 4, 3, algo=spconv.ConvAlgo.MaskImplicitGemm))
        spconv.SubMConv3d(3, 4, 3, algo=spconv.ConvAlgo.MaskImplicitGemm)
        spconv.SparseConvTensor(x.features, x.indices, x.spatial_shape, 2, force_algo=spconv.ConvAlgo.Native)
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2 and "accepted and ignored" in notes[0] and "force_algo" in notes[1]
    b = seeded(spconv.SubMConv3d(3, 4, 3))
    torch.testing.assert_close(a(x).features, b(x).features)


def test_import_paths():
    import sparseconv.spconv as package
    from sparseconv.spconv import pytorch

    assert pytorch is spconv and package.pytorch is spconv and sparseconv.spconv is package
    assert all(getattr(spconv, name) is getattr(package, name) for name in package.__all__)


@pytest.mark.skipif(not (torch.cuda.is_available() and sparseconv.build_info()["cuda"]), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, _ = tensor(shape=(9, 8, 7), dtype=torch.float32)
    model = spconv.SparseSequential(
        spconv.SubMConv3d(3, 8, 3, indice_key="s"), nn.BatchNorm1d(8), nn.ReLU(),
        spconv.SparseConv3d(8, 8, 3, 2, 1, indice_key="d"), spconv.SparseConvTranspose3d(8, 4, 2, 2),
        spconv.SparseMaxPool3d(2, indice_key="p"), spconv.SparseInverseConv3d(4, 4, 2, indice_key="p"),
        spconv.ToDense())
    ref = model(x)
    xc = spconv.SparseConvTensor(x.features.cuda(), x.indices.cuda(), x.spatial_shape, x.batch_size)
    torch.testing.assert_close(model.cuda()(xc).cpu(), ref, rtol=1e-4, atol=1e-4)
