"""utils/checkpoints.py in process, on a small module whose state_dict has UNet-like keys: every format it
reads, every refusal, parent chains, and what applying a checkpoint changes (compared tensor by tensor)."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from utils import checkpoints as ck
from utils.errors import UserError

K, V, Q = "down.attn2.to_k.weight", "down.attn2.to_v.weight", "down.attn1.to_q.weight"


class SmallUNet(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.down = torch.nn.ModuleDict({
            "attn2": torch.nn.ModuleDict({"to_k": torch.nn.Linear(3, 4, bias=False),
                                          "to_v": torch.nn.Linear(3, 4, bias=False)}),
            "attn1": torch.nn.ModuleDict({"to_q": torch.nn.Linear(3, 3, bias=False)})})
        self.conv = torch.nn.Linear(2, 2)


@pytest.fixture
def unet():
    return SmallUNet()


@pytest.fixture
def shapes(unet):
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def edit(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {K: torch.randn(4, 3, generator=g), V: torch.randn(4, 3, generator=g)}


def fails(match, fn, *args, **kwargs):
    with pytest.raises(UserError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    for m in ([match] if isinstance(match, str) else match):
        assert m in msg, msg
    return msg


def test_format_names_are_the_ones_files_carry():
    """Files already written carry these strings in their metadata: they must not change."""
    assert ck.FORMAT == "rece-toolkit/edited-attn2/v1"
    assert ck.TENSORS_FORMAT == "rece-toolkit/unet-tensors/v1"


# -- writing and reading our format ----------------------------------------------------------------------------
def test_save_writes_fp32_contiguous_copies_and_json_metadata(tmp_path):
    stacked = torch.randn(8, 3, dtype=torch.float64)
    rows = dict(zip([K, V], stacked.split(4)))   # views of one tensor
    path = ck.save_edited_weights(tmp_path / "e.safetensors", rows, {"method": "rece", "epochs": 3,
                                                                     "concepts": ["a", "b"], "gamma": 0.5})
    assert path == tmp_path / "e.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]
    back = load_file(str(path))
    assert set(back) == {K, V}
    for k in back:
        assert back[k].dtype == torch.float32
        torch.testing.assert_close(back[k], rows[k].float())
    assert ck.read_metadata(path) == {"format": ck.FORMAT, "method": "rece", "epochs": 3,
                                      "concepts": ["a", "b"], "gamma": 0.5}
    ck.save_edited_weights(tmp_path / "t.safetensors", rows, {}, format=ck.TENSORS_FORMAT)
    assert ck.read_metadata(tmp_path / "t.safetensors") == {"format": ck.TENSORS_FORMAT}


def test_metadata_strings_that_are_not_json_stay_strings(tmp_path):
    save_file(edit(), str(tmp_path / "m.safetensors"), metadata={"a": "plain text", "b": "[1, 2]", "c": "null"})
    assert ck.read_metadata(tmp_path / "m.safetensors") == {"a": "plain text", "b": [1, 2], "c": None}
    save_file(edit(), str(tmp_path / "none.safetensors"))
    assert ck.read_metadata(tmp_path / "none.safetensors") == {}


# -- inspect_checkpoint ---------------------------------------------------------------------------------------
def test_our_file_is_checked_by_key_and_shape(tmp_path, shapes):
    path = ck.save_edited_weights(tmp_path / "e.safetensors", edit(), {"method": "uce"})
    c = ck.inspect_checkpoint(path, shapes)
    assert c.path == path and c.keys == (K, V) and c.parent is None
    assert c.metadata == {"format": ck.FORMAT, "method": "uce"} and c.chain() == [c]


def test_refusals_name_the_flag_the_file_and_the_key(tmp_path, shapes):
    fails(["--x", "nowhere.pt", "does not exist"], ck.inspect_checkpoint, tmp_path / "nowhere.pt", shapes, "--x")
    save_file({"other.weight": torch.zeros(4, 3)}, str(tmp_path / "k.safetensors"))
    fails(["--ckpt", "k.safetensors", "key other.weight is not in the model's UNet"],
          ck.inspect_checkpoint, tmp_path / "k.safetensors", shapes)
    save_file({V: torch.zeros(4, 3), K: torch.zeros(3, 4)}, str(tmp_path / "s.safetensors"))
    fails([f"{K} has shape [3, 4], the model expects [4, 3]"], ck.inspect_checkpoint, tmp_path / "s.safetensors",
          shapes)
    bad = edit()
    bad[V][1, 2] = float("nan")
    save_file(bad, str(tmp_path / "nan.safetensors"))
    fails(["nan.safetensors", f"key {V}"], ck.inspect_checkpoint, tmp_path / "nan.safetensors", shapes)
    save_file({"conv.bias": torch.tensor([0.0, float("inf")])}, str(tmp_path / "inf.safetensors"))
    fails(["inf.safetensors", "key conv.bias"], ck.inspect_checkpoint, tmp_path / "inf.safetensors", shapes)
    torch.save({}, tmp_path / "empty.pt")
    fails(["--ckpt", "empty.pt", "holds no tensors"], ck.inspect_checkpoint, tmp_path / "empty.pt", shapes)


def test_unreadable_safetensors_is_named(tmp_path, shapes):
    header = json.dumps({K: {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    fails(["bad.safetensors", "not a readable safetensors file"], ck.inspect_checkpoint,
          tmp_path / "bad.safetensors", shapes)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "legacy"])
def test_torch_state_dicts_are_read(tmp_path, unet, shapes, wrap):
    state = {k: v + 1 for k, v in unet.state_dict().items()}
    path = tmp_path / "full.pt"
    if wrap == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"state_dict": state, "epoch": 3} if wrap == "state_dict" else state, path)
    c = ck.inspect_checkpoint(path, shapes)
    assert set(c.keys) == set(shapes) and c.metadata == {}
    target = SmallUNet(seed=5)
    assert ck.apply_checkpoint(target, c) == len(shapes)
    for k, v in target.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_not_a_state_dict_and_code_pickles_are_refused(tmp_path, shapes):
    torch.save([torch.zeros(4, 3)], tmp_path / "list.pt")
    fails(["list.pt", "does not hold a UNet state_dict"], ck.inspect_checkpoint, tmp_path / "list.pt", shapes)
    torch.save({K: torch.zeros(4, 3), "step": 3}, tmp_path / "mixed.pt")
    fails(["mixed.pt", "does not hold a UNet state_dict"], ck.inspect_checkpoint, tmp_path / "mixed.pt", shapes)
    torch.save({"state_dict": [1]}, tmp_path / "sd_list.pt")
    fails("does not hold a UNet state_dict", ck.inspect_checkpoint, tmp_path / "sd_list.pt", shapes)

    class Code:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({K: Code()}, tmp_path / "code.pt")
    torch.save({K: Code()}, tmp_path / "legacy_code.pt", _use_new_zipfile_serialization=False)
    for name in ("code.pt", "legacy_code.pt"):   # zip (mmap) and legacy (no mmap) readers alike
        msg = fails([name, "would run code", "weights_only=True"], ck.inspect_checkpoint, tmp_path / name, shapes)
        assert len(msg) < 400
    # a zip whose pickle is broken: read error, named with its type
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    fails(["broken.pt", "could not be read as a torch state_dict"], ck.inspect_checkpoint,
          tmp_path / "broken.pt", shapes)


@pytest.mark.parametrize("sub", ["", "unet"])
def test_diffusers_unet_folder(tmp_path, unet, shapes, sub):
    folder = tmp_path / "model"
    (folder / sub).mkdir(parents=True, exist_ok=True)
    state = {k: v * 2 for k, v in unet.state_dict().items()}
    save_file(state, str(folder / sub / "diffusion_pytorch_model.safetensors"))
    c = ck.inspect_checkpoint(folder, shapes)
    assert c.path == folder / sub / "diffusion_pytorch_model.safetensors" and set(c.keys) == set(shapes)
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["empty", "not a diffusers UNet folder"], ck.inspect_checkpoint, empty, shapes)


def test_unet_folder_prefers_safetensors_over_bin(tmp_path, unet, shapes):
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({K: torch.zeros(4, 3)}, folder / "diffusion_pytorch_model.bin")
    save_file({V: torch.ones(4, 3)}, str(folder / "diffusion_pytorch_model.safetensors"))
    assert ck.inspect_checkpoint(folder, shapes).keys == (V,)


# -- parents ---------------------------------------------------------------------------------------------------
def chain_of(tmp_path, n):
    """n files, each made on top of the one before; file i sets K to i and file 0 also sets conv.bias."""
    paths, parent = [], None
    for i in range(n):
        tensors = {K: torch.full((4, 3), float(i))}
        if i == 0:
            tensors["conv.bias"] = torch.tensor([7.0, 8.0])
        meta = {"method": f"m{i}"}
        if parent is not None:
            meta["parent"] = ck.parent_record(parent)
        path = ck.save_edited_weights(tmp_path / f"c{i}.safetensors", tensors, meta)
        parent = ck.Checkpoint(path, tuple(tensors), {})
        paths.append(path)
    return paths


def test_parent_is_applied_first_and_the_child_wins(tmp_path, shapes):
    paths = chain_of(tmp_path, 3)
    record = ck.read_metadata(paths[1])["parent"]
    assert record == {"path": str(paths[0].resolve()), "sha256": hashlib.sha256(
        paths[0].read_bytes()).hexdigest(), "bytes": paths[0].stat().st_size}
    c = ck.inspect_checkpoint(paths[2], shapes)
    assert [x.path for x in c.chain()] == paths
    assert c.parent.parent.metadata["method"] == "m0"
    t = ck.checkpoint_tensors(c)
    assert set(t) == {K, "conv.bias"} and torch.equal(t[K], torch.full((4, 3), 2.0))
    assert torch.equal(t["conv.bias"], torch.tensor([7.0, 8.0]))
    assert set(ck.checkpoint_tensors(c, lambda k: k == K)) == {K}
    target = SmallUNet()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert ck.apply_checkpoint(target, c) == 4   # 2 + 1 + 1 tensors, oldest first
    after = target.state_dict()
    assert torch.equal(after[K], torch.full((4, 3), 2.0)) and torch.equal(after["conv.bias"], torch.tensor([7., 8.]))
    for k in (V, Q, "conv.weight"):
        assert torch.equal(after[k], before[k])
    weights, c2 = ck.load_edited_weights(paths[2], {K: (4, 3), V: (4, 3)}, shapes)
    assert set(weights) == {K} and weights[K].dtype == torch.float32 and c2.path == paths[2]


def test_moved_parent_is_found_beside_the_child_and_a_changed_one_is_refused(tmp_path, shapes):
    (tmp_path / "a").mkdir()
    paths = chain_of(tmp_path / "a", 2)
    moved = tmp_path / "b"
    moved.mkdir()
    for p in paths:
        p.rename(moved / p.name)
    c = ck.inspect_checkpoint(moved / "c1.safetensors", shapes)
    assert c.parent.path == moved / "c0.safetensors"
    save_file({K: torch.zeros(4, 3)}, str(moved / "c0.safetensors"))
    fails(["c1.safetensors", "was made on top of", "missing or changed"], ck.inspect_checkpoint,
          moved / "c1.safetensors", shapes)


def test_parent_of_the_same_bytes_but_other_size_record_is_refused(tmp_path, shapes):
    paths = chain_of(tmp_path, 2)
    record = ck.parent_record(ck.Checkpoint(paths[0], (K,), {}))
    for bad in ({**record, "bytes": record["bytes"] + 1}, {"path": record["path"]}, "nope"):
        ck.save_edited_weights(tmp_path / "x.safetensors", {V: torch.zeros(4, 3)}, {"parent": bad})
        fails("x.safetensors", ck.inspect_checkpoint, tmp_path / "x.safetensors", shapes)


def test_chain_depth_limit(tmp_path, shapes):
    paths = chain_of(tmp_path, 18)
    assert len(ck.inspect_checkpoint(paths[16], shapes).chain()) == 17
    fails("longer than 16", ck.inspect_checkpoint, paths[17], shapes)


# -- applying --------------------------------------------------------------------------------------------------
def test_apply_checkpoint_refuses_a_key_or_shape_the_unet_lacks(tmp_path):
    save_file({"other.weight": torch.zeros(1)}, str(tmp_path / "o.safetensors"))
    fails(["o.safetensors", "other.weight"], ck.apply_checkpoint, SmallUNet(),
          ck.Checkpoint(tmp_path / "o.safetensors", ("other.weight",), {}))
    save_file({K: torch.zeros(3, 4)}, str(tmp_path / "s.safetensors"))
    fails(["s.safetensors", K], ck.apply_checkpoint, SmallUNet(), ck.Checkpoint(tmp_path / "s.safetensors", (K,), {}))


def test_apply_edited_weights_copies_in_the_unets_dtype(tmp_path):
    target = SmallUNet().half()
    w = edit()
    ck.apply_edited_weights(target, w)
    assert target.state_dict()[K].dtype == torch.float16
    torch.testing.assert_close(target.state_dict()[K].float(), w[K], rtol=1e-3, atol=1e-3)
    fails(["edited weight other", "not a tensor of the UNet"], ck.apply_edited_weights, target,
          {"other": torch.zeros(1)})
    fails([f"edited weight {K} has shape [3, 4], the UNet has [4, 3]"], ck.apply_edited_weights, target,
          {K: torch.zeros(3, 4)})


def test_load_checkpoint_into_unet_round_trip(tmp_path):
    path = ck.save_edited_weights(tmp_path / "e.safetensors", edit(), {})
    target = SmallUNet()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    c = ck.load_checkpoint_into_unet(target, path)
    assert c.keys == (K, V)
    assert fails("does not exist", ck.load_checkpoint_into_unet, SmallUNet(), tmp_path / "no.pt").startswith("--ckpt ")
    for k, v in target.state_dict().items():
        assert torch.equal(v, edit()[k] if k in (K, V) else before[k]), k


def test_changes_outside_the_edited_keys(tmp_path, unet, shapes):
    base = tmp_path / "base.safetensors"
    state = unet.state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k != Q}, str(base))
    same = {k: (v + 1 if k in (K, V) else v).contiguous() for k, v in state.items()}
    changed = {**same, "conv.weight": same["conv.weight"] + 1}
    save_file(same, str(tmp_path / "same.safetensors"))
    save_file(changed, str(tmp_path / "changed.safetensors"))
    c_same = ck.inspect_checkpoint(tmp_path / "same.safetensors", shapes)
    c_changed = ck.inspect_checkpoint(tmp_path / "changed.safetensors", shapes)
    assert ck.changes_outside(c_same, [K, V], base) == [Q]   # absent from the base file
    assert sorted(ck.changes_outside(c_changed, [K, V], base)) == ["conv.weight", Q]
    ours = ck.inspect_checkpoint(ck.save_edited_weights(tmp_path / "e.safetensors", edit(), {}), shapes)
    assert ck.changes_outside(ours, [K, V], tmp_path / "not_read.safetensors") == []
    # a child that changes nothing outside, on a parent that does: the parent's key is named once
    (tmp_path / "chain").mkdir()
    paths = chain_of(tmp_path / "chain", 2)
    assert ck.changes_outside(ck.inspect_checkpoint(paths[1], shapes), [K, V], base) == ["conv.bias"]


def test_check_checkpoint_reads_the_models_shapes(tiny_pipeline_dir, tmp_path):
    from utils.models import read_cross_attention_weights

    W = read_cross_attention_weights(str(tiny_pipeline_dir))
    key = next(iter(W))
    path = ck.save_edited_weights(tmp_path / "e.safetensors", {key: W[key] + 1}, {})
    assert ck.check_checkpoint(path, str(tiny_pipeline_dir)).keys == (key,)
    save_file({key: torch.zeros(1, 1)}, str(tmp_path / "bad.safetensors"))
    fails(["--target_ckpt", key, "[1, 1]"], ck.check_checkpoint, tmp_path / "bad.safetensors",
          str(tiny_pipeline_dir), "--target_ckpt")
    msg = fails(["missing.safetensors", "does not exist"], ck.check_checkpoint, tmp_path / "missing.safetensors",
                str(tiny_pipeline_dir))
    assert msg.startswith("--ckpt ")   # the flag the user gave, by default --ckpt
