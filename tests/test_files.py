"""lightning_mbu.files: outputs never overwrite inputs or existing files, and writes are atomic."""

import json
import os
import stat

import pytest

from lightning_mbu.files import OutputError, atomic_path, atomic_write, check_output, write_json, writable_dir


def test_check_output_refuses_an_input(tmp_path):
    ck = tmp_path / "model.ckpt"
    ck.write_bytes(b"weights")
    with pytest.raises(OutputError, match="model.ckpt is the input"):
        check_output(ck, inputs=[ck], force=True)  # even --force never overwrites an input
    # another spelling of the same file, and a hard link to it
    with pytest.raises(OutputError, match="is the input"):
        check_output(tmp_path / "." / "model.ckpt", inputs=[ck])
    os.link(ck, tmp_path / "link.ckpt")
    with pytest.raises(OutputError, match="is the input"):
        check_output(tmp_path / "link.ckpt", inputs=[ck], force=True)
    assert ck.read_bytes() == b"weights"


def test_check_output_existing_needs_force(tmp_path):
    out = tmp_path / "metrics.json"
    assert check_output(out, inputs=[None, tmp_path / "other"]) == out  # new file: fine
    out.write_text("{}")
    with pytest.raises(OutputError, match="exists; pass --force"):
        check_output(out)
    with pytest.raises(OutputError, match="pass --overwrite"):
        check_output(out, flag="--overwrite")
    assert check_output(out, force=True) == out
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, force=True)


def test_atomic_write_replaces_only_on_success(tmp_path):
    out = tmp_path / "sub" / "result.json"
    write_json(out, {"dice": 0.5})  # creates the folder
    assert json.loads(out.read_text()) == {"dice": 0.5}
    with pytest.raises(RuntimeError):
        with atomic_write(out) as f:
            f.write('{"half": ')
            raise RuntimeError("crash while writing")
    assert json.loads(out.read_text()) == {"dice": 0.5}  # old content intact
    with pytest.raises(TypeError):
        write_json(out, {"bad": object()})  # does not serialise: nothing written
    assert json.loads(out.read_text()) == {"dice": 0.5}
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.json"]  # no temporary files left


def test_atomic_write_binary_and_interrupt(tmp_path):
    out = tmp_path / "blob.bin"
    with atomic_write(out, "wb") as f:
        f.write(b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(out, "wb") as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert out.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(out, "a"):
            pass


def test_atomic_path_keeps_suffix_and_umask(tmp_path):
    out = tmp_path / "mask.png"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != out
        tmp.write_bytes(b"png")
        assert not out.exists()  # not visible until the block ends
    assert out.read_bytes() == b"png"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # not mkstemp's private 0600
    with pytest.raises(OutputError, match="nothing was written"):
        with atomic_path(tmp_path / "never.png") as tmp:
            tmp.unlink()
    assert not (tmp_path / "never.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=f"output folder {ro} is not writable"):
            write_json(ro / "x.json", {})
        with pytest.raises(OutputError, match="cannot create output folder"):
            writable_dir(ro / "sub")
    finally:
        ro.chmod(0o755)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        writable_dir(tmp_path / "file")


def test_permission_errors_become_output_errors(tmp_path, monkeypatch):
    """The same messages when running as root (which ignores folder permissions): the OS refusal is simulated."""
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match=f"output folder {tmp_path} is not writable"):
        write_json(tmp_path / "x.json", {})
    monkeypatch.undo()

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'x.json'}: Permission denied"):
        write_json(tmp_path / "x.json", {})
    monkeypatch.setattr("pathlib.Path.mkdir", denied)
    with pytest.raises(OutputError, match="cannot create output folder .*sub: Permission denied"):
        writable_dir(tmp_path / "sub")
