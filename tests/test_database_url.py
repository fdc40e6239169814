"""DATABASES entries from URLs and the environment. Pure configuration: no database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_poolconf
from django_poolconf.conf import pool_settings
from django_poolconf.conf.pool import POOL_KEYS
from django_poolconf.conf.rules import EXAMPLES
from django_poolconf.database_url import database_from_url, databases_from_env

ENGINE = "django_poolconf.backends.postgresql"
PASSWORD = "s3cr3t-pw"
HOST = "db.internal.example"
URL = f"postgres://app:{PASSWORD}@{HOST}:5433/appdb"


def whole(message):
    """A ``match`` pattern for exactly ``message``, not merely a message containing it."""
    return rf"\A{re.escape(message)}\Z"


def assert_no_secrets(excinfo):
    message = str(excinfo.value)
    assert PASSWORD not in message
    assert HOST not in message
    assert "://" not in message


@pytest.fixture(autouse=True)
def no_poolconf(settings):
    """database_from_url() validates against POOLCONF; keep the project's out of it."""
    settings.POOLCONF = None


# database_from_url: the entry


def test_engine_is_pooled_postgresql():
    assert database_from_url(URL)["ENGINE"] == ENGINE


def test_connection_fields_come_from_url():
    config = database_from_url(URL)

    assert config["USER"] == "app"
    assert config["PASSWORD"] == PASSWORD
    assert config["HOST"] == HOST
    assert config["PORT"] == 5433
    assert config["NAME"] == "appdb"


def test_conn_max_age_is_zero():
    assert database_from_url(URL)["CONN_MAX_AGE"] == 0


def test_entry_passes_pool_validation():
    config = database_from_url(f"{URL}?pool_size=7")

    assert pool_settings("default", config, poolconf={}).pool_size == 7


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "pgsql"])
def test_postgres_schemes_are_accepted(scheme):
    config = database_from_url(f"{scheme}://app@{HOST}/appdb")

    assert config["ENGINE"] == ENGINE
    assert config["NAME"] == "appdb"


def test_psql_scheme_is_rejected_naming_the_scheme():
    with pytest.raises(ImproperlyConfigured, match=r"has the scheme 'psql'"):
        database_from_url(f"psql://app@{HOST}/appdb")


def test_without_pool_options_pool_is_empty():
    assert database_from_url(URL)["POOL"] == {}


def test_pool_options_in_query_are_parsed():
    config = database_from_url(f"{URL}?pool_size=7&max_overflow=5&pool_timeout=30")

    assert config["POOL"] == {"pool_size": 7, "max_overflow": 5, "pool_timeout": 30.0}
    assert type(config["POOL"]["pool_size"]) is int
    assert type(config["POOL"]["max_overflow"]) is int
    assert type(config["POOL"]["pool_timeout"]) is float


def test_pool_options_do_not_reach_options():
    config = database_from_url(f"{URL}?pool_size=7&pool_timeout=30")

    assert "pool_size" not in config.get("OPTIONS", {})
    assert "pool_timeout" not in config.get("OPTIONS", {})


@pytest.mark.parametrize(
    ("query", "pool"),
    [
        ("pool_recycle=none", {"pool_recycle": None}),
        ("pool_recycle=", {"pool_recycle": None}),
        ("pool_recycle=600", {"pool_recycle": 600.0}),
        ("statement_timeout=null", {"statement_timeout": None}),
        ("statement_timeout=5000", {"statement_timeout": 5000}),
        ("pool_pre_ping=false", {"pool_pre_ping": False}),
        ("pool_pre_ping=off", {"pool_pre_ping": False}),
        ("pool_pre_ping=0", {"pool_pre_ping": False}),
        ("pool_pre_ping=TRUE", {"pool_pre_ping": True}),
        ("pool_pre_ping=yes", {"pool_pre_ping": True}),
        ("pool_pre_ping=1", {"pool_pre_ping": True}),
        ("pre_ping_threshold=0", {"pre_ping_threshold": 0.0}),
        ("validation_timeout=2.5", {"validation_timeout": 2.5}),
        ("connect_timeout=3", {"connect_timeout": 3.0}),
        ("reset_on_return=rollback", {"reset_on_return": "rollback"}),
        ("pool_size=%207%20", {"pool_size": 7}),
    ],
)
def test_pool_option_in_query_is_coerced(query, pool):
    config = database_from_url(f"{URL}?{query}")

    assert config["POOL"] == pool
    [(key, value)] = pool.items()
    assert type(config["POOL"][key]) is type(value)


#: A value of every pool option, as a query string writes it, and as it is read.
EVERY_KEY = {
    "pool_size": ("7", 7),
    "max_overflow": ("3", 3),
    "pool_timeout": ("2.5", 2.5),
    "pool_recycle": ("none", None),
    "pool_pre_ping": ("false", False),
    "pre_ping_threshold": ("1", 1.0),
    "validation_timeout": ("2", 2.0),
    "connect_timeout": ("3", 3.0),
    "statement_timeout": ("5000", 5000),
    "read_timeout": ("none", None),
    "reset_on_return": ("rollback", "rollback"),
    "thread_affinity": ("off", False),
    "checkout_scope": ("transaction", "transaction"),
    "leak_detection_threshold": ("null", None),
    "slow_checkout_ms": ("250", 250.0),
    "max_waiting": ("10", 10),
    "connect_params": (
        "tests.backends.test_credentials.vault_params",
        "tests.backends.test_credentials.vault_params",
    ),
    "pgbouncer": ("transaction", "transaction"),
    "pgbouncer_prepared_statements": ("true", True),
    "pgbouncer_admin": (
        "postgresql%3A%2F%2Fstats%40pgbouncer.internal%3A6432%2Fpgbouncer",
        "postgresql://stats@pgbouncer.internal:6432/pgbouncer",
    ),
}


@pytest.mark.parametrize("key", sorted(EVERY_KEY))
def test_every_pool_option_rides_in_the_query_string(key):
    written, read = EVERY_KEY[key]

    config = database_from_url(f"{URL}?{key}={written}")

    assert config["POOL"] == {key: read}
    assert type(config["POOL"][key]) is type(read)


def test_every_pool_option_has_a_query_string_example():
    assert set(EVERY_KEY) == set(POOL_KEYS)


def test_other_query_options_go_to_options():
    config = database_from_url(f"{URL}?sslmode=require&pool_size=7")

    assert config["OPTIONS"] == {"sslmode": "require"}
    assert config["POOL"] == {"pool_size": 7}


def test_encoded_query_options_keep_their_value():
    config = database_from_url(
        f"{URL}?options=-c%20search_path%3Dtenant&application_name=a+b"
    )

    assert config["OPTIONS"] == {
        "options": "-c search_path=tenant",
        "application_name": "a b",
    }


def test_percent_encoded_password_is_decoded():
    config = database_from_url(f"postgres://app:p%40ss%2Fw%23rd%3A@{HOST}:5432/appdb")

    assert config["PASSWORD"] == "p@ss/w#rd:"
    assert config["HOST"] == HOST
    assert config["PORT"] == 5432
    assert config["NAME"] == "appdb"


def test_percent_encoded_password_survives_pool_options():
    config = database_from_url(
        f"postgres://app:p%40ss%2Fw%23rd%3A@{HOST}:5432/appdb?pool_size=3&sslmode=require"
    )

    assert config["PASSWORD"] == "p@ss/w#rd:"
    assert config["POOL"] == {"pool_size": 3}


def test_keyword_pool_options_are_used():
    config = database_from_url(URL, pool_size=4, pool_recycle=None)

    assert config["POOL"] == {"pool_size": 4, "pool_recycle": None}


def test_query_overrides_keyword_pool_options():
    config = database_from_url(f"{URL}?pool_size=7", pool_size=4, max_overflow=2)

    assert config["POOL"] == {"pool_size": 7, "max_overflow": 2}


def test_replica_of_sets_replica_of_and_test_mirror():
    config = database_from_url(URL, alias="replica", replica_of="default")

    assert config["REPLICA_OF"] == "default"
    assert config["TEST"] == {"MIRROR": "default"}


def test_without_replica_of_there_is_no_replica_of():
    config = database_from_url(URL)

    assert "REPLICA_OF" not in config
    assert "TEST" not in config


def test_replica_of_itself_is_rejected():
    message = (
        "DATABASES['default']['REPLICA_OF'] must name another database alias, got "
        "'default'. Set REPLICA_OF to the alias of the primary, e.g. 'default'."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        database_from_url(URL, replica_of="default")


# database_from_url: errors never show the URL


def test_unknown_pool_option_suggests_closest():
    message = (
        "The database URL of 'default' has an unknown pool option 'pool_szie' in its "
        "query string. Did you mean 'pool_size'?"
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)) as excinfo:
        database_from_url(f"{URL}?pool_szie=3")

    assert_no_secrets(excinfo)


def test_near_miss_of_pool_option_is_rejected():
    message = (
        "The database URL of 'default' has an unknown pool option 'max_overflw' in its "
        "query string. Did you mean 'max_overflow'?"
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)) as excinfo:
        database_from_url(f"{URL}?max_overflw=3")

    assert_no_secrets(excinfo)


def test_unknown_pool_option_names_alias():
    with pytest.raises(
        ImproperlyConfigured, match=r"\AThe database URL of 'replica1' "
    ):
        database_from_url(f"{URL}?pool_szie=3", alias="replica1")


def test_unknown_keyword_pool_option_suggests_closest():
    with pytest.raises(
        ImproperlyConfigured, match=re.escape("Did you mean 'pool_size'?")
    ):
        database_from_url(URL, pool_szie=3)


def test_libpq_option_is_not_mistaken_for_pool_option():
    assert database_from_url(f"{URL}?keepalives_idle=30")["OPTIONS"] == {
        "keepalives_idle": 30
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_size=ten", "sets pool_size='ten'; it must be an integer."),
        ("pool_size=7.5", "sets pool_size='7.5'; it must be an integer."),
        ("pool_size=", "sets pool_size=''; it must be an integer."),
        (
            "statement_timeout=30s",
            "sets statement_timeout='30s'; it must be an integer.",
        ),
        ("pool_timeout=soon", "sets pool_timeout='soon'; it must be a number."),
        ("pool_recycle=hourly", "sets pool_recycle='hourly'; it must be a number."),
        ("pool_pre_ping=maybe", "sets pool_pre_ping='maybe'; use true or false."),
        ("pool_pre_ping=", "sets pool_pre_ping=''; use true or false."),
    ],
)
def test_unparsable_pool_option_is_rejected(query, message):
    with pytest.raises(
        ImproperlyConfigured, match=whole(f"The database URL of 'default' {message}")
    ) as excinfo:
        database_from_url(f"{URL}?{query}")

    assert_no_secrets(excinfo)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "pool_size=-1",
            "DATABASES['default']['POOL']['pool_size'] must be an integer from 1 to 10000, got -1.",
        ),
        (
            "pool_size=0",
            "DATABASES['default']['POOL']['pool_size'] must be an integer from 1 to 10000, got 0.",
        ),
        (
            "pool_timeout=0",
            "DATABASES['default']['POOL']['pool_timeout'] must be a number from 0.001 to 3600 "
            "(seconds), got 0.0.",
        ),
        (
            "pool_timeout=nan",
            "DATABASES['default']['POOL']['pool_timeout'] must be a number from 0.001 to 3600 "
            "(seconds), got nan.",
        ),
        (
            "reset_on_return=never",
            "DATABASES['default']['POOL']['reset_on_return'] must be one of 'auto', "
            "'rollback', 'full', got 'never'.",
        ),
    ],
)
def test_out_of_range_pool_option_is_rejected(query, message):
    key = query.split("=")[0]
    if key != "reset_on_return":
        message += f" For example: {key}={EXAMPLES[key]}."
    with pytest.raises(ImproperlyConfigured, match=whole(message)) as excinfo:
        database_from_url(f"{URL}?{query}")

    assert_no_secrets(excinfo)


def test_bad_keyword_pool_option_is_rejected():
    message = (
        "DATABASES['default']['POOL']['pool_size'] must be an integer, got '7' (str). "
        "Write pool_size as a Python value, not a string: e.g. pool_size=10."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        database_from_url(URL, pool_size="7")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        (f"mysql://app:{PASSWORD}@{HOST}/appdb", "mysql"),
        (f"sqlite:///{PASSWORD}.sqlite3", "sqlite"),
        (f"postgis://app:{PASSWORD}@{HOST}/appdb", "postgis"),
        (f"{HOST}/appdb", ""),
    ],
)
def test_unsupported_scheme_is_named_without_url(url, scheme):
    message = (
        f"The database URL of 'default' has the scheme {scheme!r}; django-poolconf "
        "supports postgres://, postgresql:// and pgsql:// URLs."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)) as excinfo:
        database_from_url(url)

    assert PASSWORD not in str(excinfo.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgres://app:{PASSWORD}@{HOST}:port/appdb",
        f"postgres://app:{PASSWORD}@{HOST}:99999/appdb",
        f"postgres://app:{PASSWORD}@[::1/appdb",
    ],
)
def test_malformed_url_is_rejected_without_url(url):
    message = (
        "The database URL of 'default' is not a valid URL. Percent-encode special "
        "characters in the user and password (@ is %40, / is %2F, : is %3A, # is %23)."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)) as excinfo:
        database_from_url(url)

    assert_no_secrets(excinfo)
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


# databases_from_env


def test_env_builds_default_and_numbered_replicas():
    databases = databases_from_env(
        {
            "DATABASE_URL": f"postgres://app:{PASSWORD}@primary.example:5432/app?pool_size=7",
            "DATABASE_REPLICA_URLS": (
                "postgres://ro:pw1@replica-a.example:5433/app_a,"
                "postgres://ro:pw2@replica-b.example:5434/app_b"
            ),
        }
    )

    assert list(databases) == ["default", "replica1", "replica2"]
    assert {alias: db["HOST"] for alias, db in databases.items()} == {
        "default": "primary.example",
        "replica1": "replica-a.example",
        "replica2": "replica-b.example",
    }
    assert {alias: db["PORT"] for alias, db in databases.items()} == {
        "default": 5432,
        "replica1": 5433,
        "replica2": 5434,
    }
    assert {alias: db["NAME"] for alias, db in databases.items()} == {
        "default": "app",
        "replica1": "app_a",
        "replica2": "app_b",
    }
    assert databases["default"]["POOL"] == {"pool_size": 7}
    assert databases["replica1"]["POOL"] == {}
    assert "REPLICA_OF" not in databases["default"]
    assert databases["replica1"]["REPLICA_OF"] == "default"
    assert databases["replica2"]["REPLICA_OF"] == "default"
    assert databases["replica2"]["TEST"] == {"MIRROR": "default"}
    assert all(db["ENGINE"] == ENGINE for db in databases.values())


def test_env_without_replicas_is_only_default():
    assert list(databases_from_env({"DATABASE_URL": URL})) == ["default"]


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_env_blank_replica_list_adds_no_replicas(value):
    databases = databases_from_env(
        {"DATABASE_URL": URL, "DATABASE_REPLICA_URLS": value}
    )

    assert list(databases) == ["default"]


def test_env_empty_items_in_replica_list_are_ignored():
    databases = databases_from_env(
        {
            "DATABASE_URL": URL,
            "DATABASE_REPLICA_URLS": (
                " ,postgres://ro@replica-a.example/app,, postgres://ro@replica-b.example/app ,"
            ),
        }
    )

    assert list(databases) == ["default", "replica1", "replica2"]
    assert databases["replica1"]["HOST"] == "replica-a.example"
    assert databases["replica2"]["HOST"] == "replica-b.example"


@pytest.mark.parametrize("environ", [{}, {"DATABASE_URL": ""}, {"DATABASE_URL": "  "}])
def test_env_missing_database_url_names_variable(environ):
    message = (
        "The environment variable DATABASE_URL is not set. Set it to the primary "
        "database's URL, e.g. postgres://user:password@host:5432/name."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        databases_from_env(environ)


def test_env_missing_custom_variable_names_it():
    with pytest.raises(
        ImproperlyConfigured, match=r"\AThe environment variable PRIMARY_DSN "
    ):
        databases_from_env({"DATABASE_URL": URL}, url_variable="PRIMARY_DSN")


def test_env_custom_variables_and_prefix():
    databases = databases_from_env(
        {"PRIMARY_DSN": URL, "READ_DSNS": "postgres://ro@replica-a.example/app"},
        url_variable="PRIMARY_DSN",
        replica_variable="READ_DSNS",
        replica_prefix="read",
    )

    assert list(databases) == ["default", "read1"]
    assert databases["read1"]["REPLICA_OF"] == "default"


def test_env_keyword_pool_options_apply_to_all():
    databases = databases_from_env(
        {
            "DATABASE_URL": URL,
            "DATABASE_REPLICA_URLS": "postgres://ro@replica-a.example/app",
        },
        pool_size=3,
        pool_timeout=2,
    )

    assert databases["default"]["POOL"] == {"pool_size": 3, "pool_timeout": 2}
    assert databases["replica1"]["POOL"] == {"pool_size": 3, "pool_timeout": 2}


def test_env_query_overrides_keyword_pool_options_for_that_alias():
    databases = databases_from_env(
        {
            "DATABASE_URL": URL,
            "DATABASE_REPLICA_URLS": "postgres://ro@replica-a.example/app?pool_size=9",
        },
        pool_size=3,
    )

    assert databases["default"]["POOL"] == {"pool_size": 3}
    assert databases["replica1"]["POOL"] == {"pool_size": 9}


def test_env_bad_replica_url_names_its_alias():
    message = (
        "The database URL of 'replica2' sets pool_size='ten'; it must be an integer."
    )

    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        databases_from_env(
            {
                "DATABASE_URL": URL,
                "DATABASE_REPLICA_URLS": (
                    "postgres://ro@replica-a.example/app,"
                    f"postgres://ro:{PASSWORD}@replica-b.example/app?pool_size=ten"
                ),
            }
        )


def test_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"{URL}?pool_size=6")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgres://ro@replica-a.example/app")

    databases = databases_from_env()

    assert list(databases) == ["default", "replica1"]
    assert databases["default"]["POOL"] == {"pool_size": 6}


def test_env_missing_from_os_environ_names_variable(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)

    with pytest.raises(
        ImproperlyConfigured, match=r"\AThe environment variable DATABASE_URL "
    ):
        databases_from_env()


def test_env_works_before_settings_are_configured():
    code = (
        "from django_poolconf import databases_from_env\n"
        "databases_from_env({'DATABASE_URL': 'postgres://app@db.example/app'})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(Path(django_poolconf.__file__).resolve().parents[1])

    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert "Requested setting POOLCONF" not in result.stderr
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("password", ["p@ss/w:rd", "pa#ss", "12?34"])
def test_unencoded_password_is_reported_without_the_url(password):
    with pytest.raises(ImproperlyConfigured, match="Percent-encode") as raised:
        database_from_url(f"postgres://app:{password}@db.example:5432/app")

    assert password not in str(raised.value)
    assert "db.example" not in str(raised.value)


# -- review of issue 14: multi-host URLs (libpq's failover syntax) -----------------------


def test_a_multi_host_url_with_ports_gives_host_and_port_lists():
    # What deployment.rst's failover section sets by hand, as libpq's URLs write it.
    url = (
        f"postgres://app:{PASSWORD}@db1.internal:5432,db2.internal:5433/appdb"
        "?target_session_attrs=read-write"
    )

    entry = database_from_url(url)

    assert (entry["HOST"], entry["PORT"]) == ("db1.internal,db2.internal", "5432,5433")
    assert (entry["USER"], entry["PASSWORD"], entry["NAME"]) == (
        "app",
        PASSWORD,
        "appdb",
    )
    assert entry["OPTIONS"] == {"target_session_attrs": "read-write"}


def test_a_multi_host_url_with_a_port_on_some_hosts_leaves_the_others_default():
    entry = database_from_url(f"postgres://app:{PASSWORD}@db1,[::1]:5433,db3/appdb")

    assert (entry["HOST"], entry["PORT"]) == ("db1,::1,db3", ",5433,")


def test_a_bad_port_in_a_multi_host_url_is_rejected_without_the_url():
    with pytest.raises(ImproperlyConfigured, match="not a valid URL") as excinfo:
        database_from_url(f"postgres://app:{PASSWORD}@{HOST}:5432,db2:port/appdb")

    assert_no_secrets(excinfo)


def test_env_multi_host_replica_url_is_one_replica():
    environ = {
        "DATABASE_URL": f"postgres://app:{PASSWORD}@db1:5432,db2:5432/appdb",
        "DATABASE_REPLICA_URLS": (
            f"postgres://app:{PASSWORD}@r1:5432,r2:5432/appdb, "
            f"postgres://app:{PASSWORD}@r3/appdb"
        ),
    }

    databases = databases_from_env(environ)

    assert sorted(databases) == ["default", "replica1", "replica2"]
    assert (databases["default"]["HOST"], databases["default"]["PORT"]) == (
        "db1,db2",
        "5432,5432",
    )
    assert (databases["replica1"]["HOST"], databases["replica1"]["PORT"]) == (
        "r1,r2",
        "5432,5432",
    )
    assert databases["replica2"]["HOST"] == "r3"


def test_an_unencoded_admin_url_in_the_query_string_is_named():
    # Review 16: the message spoke of the outer URL's user and password.
    url = (
        "postgres://app:pw@db.example/app?pgbouncer=transaction"
        "&pgbouncer_admin=postgresql://st:s3cret@pgb:6432/pgbouncer"
    )
    with pytest.raises(ImproperlyConfigured) as raised:
        database_from_url(url)

    message = str(raised.value)
    assert "pgbouncer_admin" in message
    assert "Percent-encode" in message
    assert "user and password" not in message
    assert "s3cret" not in message
