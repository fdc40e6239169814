"""The parking lot, in process: no pool, no server."""

from __future__ import annotations

from django_poolconf.pool.parking import ParkingLot


def test_the_owner_takes_back_what_it_parked():
    lot: ParkingLot[str, str] = ParkingLot()
    lot.park("loan", "conn")
    assert len(lot) == 1
    assert lot.take_back("loan") == "conn"
    assert not lot


def test_what_was_taken_cannot_be_taken_back():
    lot: ParkingLot[str, str] = ParkingLot()
    lot.park("loan", "conn")
    assert lot.steal_oldest() == "conn"
    assert lot.take_back("loan") is None


def test_a_thief_takes_the_oldest_parked():
    lot: ParkingLot[str, str] = ParkingLot()
    lot.park("a", "first")
    lot.park("b", "second")
    assert lot.steal_oldest() == "first"
    assert lot.steal_oldest() == "second"
    assert lot.steal_oldest() is None


def test_parking_again_under_a_key_replaces_the_entry():
    lot: ParkingLot[str, str] = ParkingLot()
    lot.park("a", "old")
    lot.park("a", "new")
    assert lot.snapshot() == ["new"]


def test_forget_empties_the_lot_and_returns_what_it_held():
    lot: ParkingLot[str, str] = ParkingLot()
    lot.park("a", "first")
    lot.park("b", "second")
    assert lot.forget() == ["first", "second"]
    assert not lot
    assert lot.take_back("a") is None
