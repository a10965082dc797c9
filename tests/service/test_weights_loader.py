"""The weights loader's S3 path against moto's S3 server on loopback."""

from __future__ import annotations

import pytest
from testkit import free_port

from service.weights_loader import copy_s3_prefix, main, split_s3_uri


@pytest.fixture
def s3_endpoint(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="weights")
    client.put_object(Bucket="weights", Key="sd15/model_index.json", Body=b"{}")
    client.put_object(Bucket="weights", Key="sd15/unet/diffusion.safetensors", Body=b"x" * 1000)
    client.put_object(Bucket="weights", Key="other/ignored.bin", Body=b"no")
    yield endpoint
    server.stop()


def test_an_s3_prefix_is_copied_and_a_rerun_skips_what_is_there(s3_endpoint, tmp_path):
    dest = tmp_path / "sd15"
    written = copy_s3_prefix("s3://weights/sd15/", dest, s3_endpoint)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == [
        "model_index.json",
        "unet/diffusion.safetensors",
    ]
    assert (dest / "unet" / "diffusion.safetensors").read_bytes() == b"x" * 1000
    assert not list(dest.rglob("*.partial")) and not (dest / "ignored.bin").exists()
    assert copy_s3_prefix("s3://weights/sd15", dest, s3_endpoint) == []


def test_the_command_line_needs_a_destination_for_s3(s3_endpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["s3://weights/sd15"])
    assert "--dest" in capsys.readouterr().err
    assert main(["s3://weights/sd15", "--dest", str(tmp_path / "m"), "--endpoint-url", s3_endpoint]) == 0
    assert "QALIGN_MODEL=" in capsys.readouterr().out


def test_s3_uris_name_a_bucket():
    assert split_s3_uri("s3://b/a/b/") == ("b", "a/b")
    with pytest.raises(ValueError, match="no bucket"):
        split_s3_uri("s3:///x")
