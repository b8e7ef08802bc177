from gcs_fixtures import gcs_dir, gcs_emulator  # noqa: F401  (fixtures)
