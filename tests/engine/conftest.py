from support.engine import db_path, ledger  # noqa: F401 - fixtures
