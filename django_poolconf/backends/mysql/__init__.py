"""The pooled MySQL/MariaDB backend (mysqlclient)."""
