"""The TensorRT EP's engine cache index (the provider itself is absent here; the index logic is plain files)."""

import json

from mapex_serve.engine_cache import INDEX_NAME, record_cache, verify_cache


def test_only_indexed_cache_files_with_their_hash_survive(tmp_path):
    (tmp_path / "model_ctx.engine").write_bytes(b"engine built by this service")
    (tmp_path / "model.profile").write_bytes(b"profile")
    index = record_cache(tmp_path)
    assert set(index) == {"model_ctx.engine", "model.profile"}
    assert json.loads((tmp_path / INDEX_NAME).read_text()) == index
    assert verify_cache(tmp_path) == []  # what this service wrote loads

    (tmp_path / "model.profile").write_bytes(b"tampered")  # changed behind the service's back
    (tmp_path / "dropped_in.engine").write_bytes(b"foreign")  # put there by something else
    (tmp_path / "link.engine").symlink_to(tmp_path / "model_ctx.engine")
    removed = verify_cache(tmp_path)
    assert sorted(removed) == ["dropped_in.engine (not in the cache index)", "link.engine (a link)",
                               "model.profile (sha256 differs from the index)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_NAME, "model_ctx.engine"]


def test_a_missing_or_broken_index_trusts_nothing(tmp_path):
    (tmp_path / "old.engine").write_bytes(b"x")
    (tmp_path / INDEX_NAME).write_text("{not json")
    assert verify_cache(tmp_path) == ["old.engine (not in the cache index)"]
