"""The decoded-image cache: disk-backed, bounded memory, built atomically; decoding any image mode."""
from __future__ import annotations

import errno
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import face
from fer_utils.data import images
from fer_utils.data.datasets import DataError, fingerprint, read_affectnet_mini, read_folders
from fer_utils.engine.sampling import ArrayDataset


@pytest.fixture(autouse=True)
def decoded_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "decoded")
    return tmp_path / "decoded"


def opened(root):
    ds = read_folders(root)
    ds.fingerprint = fingerprint(ds)
    return ds


def cache_files(folder):
    return sorted(p.name.split(".", 1)[1] for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_cache_is_a_disk_backed_map_with_the_values_and_order_of_a_fresh_decode(folders_dataset, decoded_cache):
    fresh = images.load_split(opened(folders_dataset), "train", 20, 3, cache=False)
    built = images.load_split(opened(folders_dataset), "train", 20, 3)
    reread = images.load_split(opened(folders_dataset), "train", 20, 3)
    for x, y, locations in (built, reread):
        assert isinstance(x, np.memmap) and x.flags.writeable  # copy-on-write: torch takes it as it is
        np.testing.assert_array_equal(x, fresh[0])
        np.testing.assert_array_equal(y, fresh[1])
        np.testing.assert_array_equal(locations, fresh[2])
    assert cache_files(decoded_cache) == ["meta.npz", "npy"]
    reread[0][0] = 0  # writes stay in this process: the file is never changed through the map
    np.testing.assert_array_equal(images.load_split(opened(folders_dataset), "train", 20, 3)[0], fresh[0])


def test_cache_is_written_one_chunk_at_a_time(folders_dataset, monkeypatch):
    monkeypatch.setattr(images, "CHUNK_BYTES", 5 * 3 * 20 * 20)  # 5 images per chunk
    blocks = []
    write = images._write_rows
    monkeypatch.setattr(images, "_write_rows", lambda f, block: (blocks.append(len(block)), write(f, block)))
    x, _, _ = images.load_split(opened(folders_dataset), "train", 20, 3)
    assert blocks == [5, 5, 2] and len(x) == 12


def test_disk_full_while_writing_is_a_clear_error_and_nothing_half_written_is_used(folders_dataset,
                                                                                   decoded_cache, monkeypatch):
    monkeypatch.setattr(images, "CHUNK_BYTES", 4 * 20 * 20)
    calls = []
    write = images._write_rows

    def fill_up(f, block):
        calls.append(len(block))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(f, block)
    monkeypatch.setattr(images, "_write_rows", fill_up)
    with pytest.raises(DataError, match=r"no space left .* 'train' split needs .* nothing half-written was kept"):
        images.load_split(opened(folders_dataset), "train", 20)
    assert cache_files(decoded_cache) == []
    monkeypatch.setattr(images, "_write_rows", write)
    x, y, _ = images.load_split(opened(folders_dataset), "train", 20)
    np.testing.assert_array_equal(x, images.load_split(opened(folders_dataset), "train", 20, cache=False)[0])


def test_a_split_larger_than_the_free_disk_fails_before_decoding(folders_dataset, decoded_cache, monkeypatch):
    monkeypatch.setattr(images.shutil, "disk_usage", lambda path: type("usage", (), dict(free=100))())
    monkeypatch.setattr(images, "_decode_into", lambda *a: pytest.fail("decoded although the disk is full"))
    with pytest.raises(DataError, match=r"needs 0\.00 GiB \(12 images, 1 x 20 x 20 bytes each; 0\.00 GiB free\)"):
        images.load_split(opened(folders_dataset), "train", 20)
    assert cache_files(decoded_cache) == []


def test_interrupted_build_leaves_nothing_and_the_next_call_rebuilds(folders_dataset, decoded_cache, monkeypatch):
    def interrupt(f, block):
        raise KeyboardInterrupt
    monkeypatch.setattr(images, "_write_rows", interrupt)
    with pytest.raises(KeyboardInterrupt):
        images.load_split(opened(folders_dataset), "train", 20)
    assert cache_files(decoded_cache) == []
    monkeypatch.undo()
    monkeypatch.setattr(images, "CACHE_DIR", decoded_cache)
    # A build killed outright (kill -9) leaves its temporary file, maybe pixels without a sidecar.
    key = f"{opened(folders_dataset).fingerprint}-train-20-1"
    (decoded_cache / f"{key}.npy.tmp").write_bytes(b"half")
    np.save(decoded_cache / f"{key}.npy", np.zeros((12, 1, 20, 20), np.uint8))
    x, _, _ = images.load_split(opened(folders_dataset), "train", 20)
    np.testing.assert_array_equal(x, images.load_split(opened(folders_dataset), "train", 20, cache=False)[0])


@pytest.mark.parametrize("stale", ["format 1 .npz", "older sidecar format", "sidecar of another key",
                                   "pixels of another shape", "corrupt sidecar"])
def test_a_cache_of_an_older_format_or_other_params_is_rebuilt_never_used(folders_dataset, decoded_cache, stale):
    ds = opened(folders_dataset)
    key = f"{ds.fingerprint}-train-20-1"
    fresh = images.load_split(opened(folders_dataset), "train", 20, cache=False)
    if stale == "format 1 .npz":
        decoded_cache.mkdir()
        np.savez(decoded_cache / f"{key}.npz", x=np.zeros((12, 1, 20, 20), np.uint8), y=np.zeros(12, np.int64),
                 locations=np.array(["a"] * 12), failed_locations=np.array([], str), failed_reasons=np.array([], str))
    else:
        images.load_split(opened(folders_dataset), "train", 20)
        meta, pixels = decoded_cache / f"{key}.meta.npz", decoded_cache / f"{key}.npy"
        with np.load(meta) as z:
            fields = dict(z)
        fields["format"] = images.CACHE_FORMAT - (stale == "older sidecar format")
        fields["key"] = "0123456789abcdef-train-20-1" if stale == "sidecar of another key" else key
        np.savez(meta, **fields)
        if stale == "corrupt sidecar":
            meta.write_bytes(b"PK\x03\x04 not a zip")
        np.save(pixels, np.zeros((12, 1, 10, 10) if stale == "pixels of another shape" else (12, 1, 20, 20), np.uint8))
    x, y, locations = images.load_split(opened(folders_dataset), "train", 20)
    np.testing.assert_array_equal(x, fresh[0])
    np.testing.assert_array_equal(locations, fresh[2])
    assert not (decoded_cache / f"{key}.npz").exists()


def test_unreadable_images_leave_no_rows_and_are_counted_from_the_cache_too(folders_dataset):
    (folders_dataset / "train" / "happy" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for _ in range(2):  # built, then read back
        ds = opened(folders_dataset)
        x, y, locations = images.load_split(ds, "train", 20)
        assert x.shape == (11, 1, 20, 20) and len(y) == len(locations) == 11
        assert ds.skipped["reason"].str.startswith("unreadable image").sum() == 1
        assert "train/happy/1.png" not in set(locations) and len(ds.split("train")) == 11


def test_mixed_sizes_and_modes_in_one_folder_decode(tmp_path):
    root = tmp_path / "mixed"
    folder = root / "train" / "happy"
    folder.mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))
    Image.fromarray(ramp).save(folder / "sixteen_bit.png")  # opens as I;16
    face(1, 24, "L").save(folder / "gray.png")
    face(2, 50, "RGB").save(folder / "rgb.jpg")
    rgba = Image.new("RGBA", (33, 17), (200, 10, 10, 0))
    rgba.save(folder / "rgba.png")
    palette = face(3, 28, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    face(4, 64, "RGB").convert("CMYK").save(folder / "cmyk.jpg")
    ds = opened(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for channels in (1, 3):
            x, _, locations = images.load_split(ds, "train", 32, channels)
            assert x.shape == (6, channels, 32, 32) and ds.skipped.empty
    # 16-bit is scaled to 0-255 (PIL's own convert clips it to white): a ramp from black to white.
    x = images.load_split(ds, "train", 40, 1, cache=False)[0]
    gray = x[list(locations).index("train/happy/sixteen_bit.png"), 0]
    assert gray[:, 0].max() == 0 and gray[:, -1].min() == 255 and 120 < gray.mean() < 135


def test_affectnet_annotation_missing_or_unreadable_skips_the_image_with_the_reason(affectnet_mini):
    ann = affectnet_mini / "val_set" / "annotations"
    (ann / "0_exp.npy").unlink()               # missing
    (ann / "1_exp.npy").write_bytes(b"")        # empty
    (ann / "2_exp.npy").write_bytes(b"junk")    # not .npy
    (ann / "3_val.npy").write_bytes(b"")        # an optional file unreadable
    np.save(ann / "4_aro.npy", np.array("not a number"))
    ds = read_affectnet_mini(affectnet_mini)
    skipped = ds.skipped[ds.skipped["split"] == "val"].set_index("location")["reason"]
    assert skipped["val_set/images/0.jpg"] == "no annotation"
    assert skipped["val_set/images/1.jpg"].startswith("unreadable annotation: 1_exp.npy")
    assert skipped["val_set/images/2.jpg"].startswith("unreadable annotation: 2_exp.npy")
    assert skipped["val_set/images/3.jpg"].startswith("unreadable annotation: 3_val.npy")
    assert skipped["val_set/images/4.jpg"].startswith("unreadable annotation")
    assert len(ds.split("val")) == 3
    assert ds.skip_counts().set_index(["split", "reason"]).loc[("val", "unreadable annotation")].iloc[0] == 4


def test_a_memory_mapped_dataset_pickles_as_its_file_not_its_images(folders_dataset):
    x, y, _ = images.load_split(opened(folders_dataset), "train", 64, 3)
    data = ArrayDataset(x, y)
    copy = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < 2000 < x.nbytes
    assert isinstance(copy.x, np.memmap)
    for a, b in zip(copy.__getitems__([3, 0, 7]), data.__getitems__([3, 0, 7])):
        assert torch.equal(a, b)
