from __future__ import annotations

import pytest

from tests.conftest import wsgi_get


@pytest.mark.django_db(transaction=True)
def test_smoke():
    r1 = wsgi_get("/item/")
    r2 = wsgi_get("/item/")
    print(r1.status, r1.body, r2.body)
    assert r1.status == 200
    assert r1.json()["pid"] == r2.json()["pid"]
