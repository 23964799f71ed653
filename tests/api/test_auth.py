"""Bearer keys and owners: no key or a wrong one is a 401, an owner sees only its own data, and the
`charrnn keys` commands make, list and revoke keys that the API honours at once."""

from __future__ import annotations

import re

from tests.harness import small_corpus


def test_auth_required_and_isolation(api):
    with api.client(key=None) as anon:
        r = anon.get("/corpora")
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    with api.client(key="crn_wrong") as wrong:
        assert wrong.get("/corpora").status_code == 401

    made = api.cli("keys", "create", "bob")
    bob_key, bob_key_id = (
        made.stdout.strip().splitlines()[-1],
        re.search(r"key_[0-9a-f]+", made.stderr).group(),
    )
    with api.client() as alice, api.client(key=bob_key) as bob:
        mine = api.upload(alice, small_corpus(5000), name="alice-only")
        assert bob.get(f"/corpora/{mine['id']}").status_code == 404
        assert bob.delete(f"/corpora/{mine['id']}").status_code == 404
        assert all(c["id"] != mine["id"] for c in bob.get("/corpora").json()["data"])
        r = bob.post("/jobs", json={"corpus_id": mine["id"]})
        assert r.status_code == 404
        theirs = api.upload(bob, small_corpus(5000), name="bob-only")
        assert alice.get(f"/corpora/{theirs['id']}").status_code == 404

        # A second key with the same name is the same owner; revoking one key leaves the other working.
        bob2_key = api.cli("keys", "create", "bob").stdout.strip().splitlines()[-1]
        with api.client(key=bob2_key) as bob2:
            assert bob2.get(f"/corpora/{theirs['id']}").status_code == 200
        listing = api.cli("keys", "list").stdout
        assert bob_key_id in listing and bob_key not in listing  # keys are never shown again
        assert api.cli("keys", "revoke", bob_key_id).returncode == 0
        assert bob.get("/corpora").status_code == 401
        with api.client(key=bob2_key) as bob2:
            assert bob2.get(f"/corpora/{theirs['id']}").status_code == 200
        assert api.cli("keys", "revoke", bob_key_id).returncode == 1  # already revoked
