import uuid

import pytest

from frd_assets.core.store import LocalStore, ObjectNotFound, S3Store, StoreError


@pytest.fixture
def bucket():
    return f"t-{uuid.uuid4().hex[:12]}"


def test_round_trip_creates_the_bucket(store, bucket):
    store.put_bytes(bucket, "a/b.jsonl", b'{"x": 1}\n')
    assert store.get_bytes(bucket, "a/b.jsonl") == b'{"x": 1}\n'
    assert store.exists(bucket, "a/b.jsonl")
    store.put_bytes(bucket, "a/b.jsonl", "ü".encode())  # overwrite replaces whole
    assert store.get_bytes(bucket, "a/b.jsonl") == "ü".encode()


def test_missing_key_and_missing_bucket_raise_object_not_found(store, bucket):
    store.put_bytes(bucket, "present", b"1")
    with pytest.raises(ObjectNotFound, match=f"no object .*{bucket}.*absent"):
        store.get_bytes(bucket, "absent")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(f"{bucket}-none", "x")
    assert not store.exists(bucket, "absent")
    assert list(store.list(f"{bucket}-none")) == []


def test_list_delete_and_prefixes(store, bucket):
    for key in ("u1/a.jsonl", "u1/b.jsonl", "u2/a.jsonl"):
        store.put_bytes(bucket, key, key.encode())
    assert sorted(i.key for i in store.list(bucket, "u1/")) == ["u1/a.jsonl", "u1/b.jsonl"]
    infos = list(store.list(bucket))
    assert all(i.size == len(i.key) and i.last_modified > 0 and i.etag for i in infos)
    store.delete(bucket, "u2/a.jsonl")
    store.delete(bucket, "u2/a.jsonl")  # deleting twice is fine
    assert store.delete_prefix(bucket, "u1/") == 2
    assert list(store.list(bucket)) == []


def test_a_get_returns_the_etag_of_what_it_read(store, bucket):
    store.put_bytes(bucket, "u/seed.jsonl", b"one")
    data, info = store.get_object(bucket, "u/seed.jsonl")
    [listed] = list(store.list(bucket, "u/"))
    assert data == b"one" and info.key == "u/seed.jsonl" and info.size == 3 and info.etag == listed.etag
    store.put_bytes(bucket, "u/seed.jsonl", b"two")
    assert store.get_object(bucket, "u/seed.jsonl")[1].etag != info.etag


def test_stat_matches_the_listing_and_start_after_skips_what_sorts_before(store, bucket):
    """The seed sensor compares a lookup's time and ETag with a listing's (defs/sensors.py): they must agree."""
    for key in ("j/h1/001-a", "j/h1/002-b", "j/h1/003-c", "j/h2/001-d", "top.jsonl"):
        store.put_bytes(bucket, key, key.encode())
    listed = {i.key: i for i in store.list(bucket)}
    assert {k: store.stat(bucket, k) for k in listed} == listed
    assert store.stat_many(bucket, ["top.jsonl", "j/h1/002-b", "absent"]) == {
        "top.jsonl": listed["top.jsonl"], "j/h1/002-b": listed["j/h1/002-b"]}
    with pytest.raises(ObjectNotFound, match="absent"):
        store.stat(bucket, "absent")
    with pytest.raises(ObjectNotFound):
        store.stat(bucket, "j/h1")  # a folder of the local store is no object
    assert store.stat_many(bucket, ["j", "j/h1"]) == {}
    assert [i.key for i in store.list(bucket, "j/h1/", start_after="j/h1/001")] == [
        "j/h1/001-a", "j/h1/002-b", "j/h1/003-c"]
    assert [i.key for i in store.list(bucket, "j/h1/", start_after="j/h1/001-a")] == ["j/h1/002-b", "j/h1/003-c"]
    assert [i.key for i in store.list(bucket, "j/h2/")] == ["j/h2/001-d"]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/./b", "a/../b", "a/", "a\nb"])
def test_keys_with_two_spellings_are_refused_on_both_backends(store, bucket, key):
    """pathlib collapses 'a//b' and S3 servers strip a leading '/': such keys could name another object."""
    with pytest.raises(StoreError, match="key"):
        store.put_bytes(bucket, key, b"x")
    with pytest.raises(StoreError, match="key"):
        store.get_bytes(bucket, key)
    assert list(store.list(bucket)) == []


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("b", "k", b"old")

    # A failing write (here: not bytes) leaves the old object whole and no temp file behind.
    with pytest.raises(TypeError):
        store.put_bytes("b", "k", 12345)  # type: ignore[arg-type]
    assert store.get_bytes("b", "k") == b"old"
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["k"]


def test_local_rejects_keys_escaping_the_bucket(tmp_path):
    with pytest.raises(StoreError, match="invalid key"):
        LocalStore(tmp_path).put_bytes("b", "../escape", b"x")


def test_s3_wrong_credentials_are_rejected_without_leaking_the_secret(s3_server):
    store = S3Store.connect(s3_server.endpoint, s3_server.access_key, "wrong-secret-value")
    with pytest.raises(StoreError) as err:
        store.put_bytes("seeds", "x.jsonl", b"1")
    assert "MINIO_SECRET_KEY" in str(err.value) and "wrong-secret-value" not in str(err.value)
    assert "wrong-secret-value" not in repr(store)
    unknown = S3Store.connect(s3_server.endpoint, "nobody", "nothing-at-all")
    with pytest.raises(StoreError, match="refused"):
        list(unknown.list("seeds"))


def test_s3_unreachable_endpoint_names_it():
    store = S3Store.connect("127.0.0.1:9", "k", "s")
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StoreError, match="127.0.0.1:9"):
        store.get_bytes("seeds", "x")


def test_the_local_listing_keys_nested_folders_and_skips_links_and_unfinished_writes(tmp_path):
    from frd_assets.core.store import LocalStore

    store = LocalStore(tmp_path / "store")
    for key in ("a.jsonl", "u1/a.jsonl", "u1/ab/c.json", "u10/a.jsonl"):
        store.put_bytes("b", key, b"x")
    bucket = tmp_path / "store" / "b"
    (bucket / "u1" / ".tmp-half").write_bytes(b"half")  # a write in progress
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "f").write_bytes(b"secret")
    (bucket / "linked").symlink_to(outside / "d")
    (bucket / "u1" / "link.jsonl").symlink_to(outside / "d" / "f")

    assert [i.key for i in store.list("b")] == ["a.jsonl", "u1/a.jsonl", "u1/ab/c.json", "u10/a.jsonl"]
    assert [i.key for i in store.list("b", "u1/")] == ["u1/a.jsonl", "u1/ab/c.json"]
    assert [i.key for i in store.list("b", "u1/a")] == ["u1/a.jsonl", "u1/ab/c.json"]
    assert [i.key for i in store.list("b", "u1")] == ["u1/a.jsonl", "u1/ab/c.json", "u10/a.jsonl"]
    assert list(store.list("b", "linked/")) == [] and list(store.list("b", "nope/")) == []


def test_a_local_listing_by_a_prefix_without_a_slash_looks_only_at_what_it_can_return(tmp_path, monkeypatch):
    """The seed sensor lists one shard of the seeds bucket ('a'): files of other shards are not stat'ed, and
    folders that cannot hold such a key (the upload journal's) are not walked."""
    import os

    from frd_assets.core import store as store_module

    store = LocalStore(tmp_path / "store")
    for key in ("a1.jsonl", "a2.retired.json", "b1.jsonl", "_uploads/h/a3", "ab/c.json"):
        store.put_bytes("b", key, b"x")
    walked, stated = [], []

    class Entry:  # an os.DirEntry that records its stat calls
        def __init__(self, entry):
            self.entry, self.name, self.path = entry, entry.name, entry.path

        def is_symlink(self):
            return self.entry.is_symlink()

        def is_dir(self, **kw):
            return self.entry.is_dir(**kw)

        def stat(self, **kw):
            stated.append(self.name)
            return self.entry.stat(**kw)

    real = os.scandir

    def scandir(path):
        walked.append(os.path.relpath(path, tmp_path / "store" / "b"))
        return [Entry(e) for e in real(path)]

    monkeypatch.setattr(store_module.os, "scandir", scandir)
    assert [i.key for i in store.list("b", "a")] == ["a1.jsonl", "a2.retired.json", "ab/c.json"]
    assert sorted(stated) == ["a1.jsonl", "a2.retired.json", "c.json"]
    assert sorted(walked) == [".", "ab"]
