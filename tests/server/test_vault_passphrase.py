"""A new vault's passphrase must be long: the CA proof lets anyone who reaches the server test
guesses of it offline, so a short one would fall to a dictionary."""

from __future__ import annotations

import pytest

from dr.model import Estate
from dr.server.service import MIN_VAULT_PASSPHRASE, AuthError, ConfigServer
from dr.server.store import Store
from tests.server.conftest import PASSPHRASE, Clock


def test_a_new_vault_refuses_a_short_passphrase_and_says_how_to_make_one(sqlite_store: Store, sharepoint: Estate,
                                                                        clock: Clock) -> None:
    server = ConfigServer(store=sqlite_store, estate=sharepoint, clock=clock)
    with pytest.raises(AuthError, match=f"at least {MIN_VAULT_PASSPHRASE} characters.*openssl rand"):
        server.init_vault("x" * (MIN_VAULT_PASSPHRASE - 1))
    assert sqlite_store.get_meta("vault_passphrase") is None  # nothing was created
    server.init_vault("y" * MIN_VAULT_PASSPHRASE)
    assert server.check_passphrase("y" * MIN_VAULT_PASSPHRASE)


def test_the_tests_passphrase_is_long_enough() -> None:
    assert len(PASSPHRASE) >= MIN_VAULT_PASSPHRASE
