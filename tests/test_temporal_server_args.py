"""The embedded Temporal's arguments: one partition per task queue only for a database berth makes so;
search attribute definitions cached.

(That the server takes these arguments is checked by every test that starts a stack.)"""

from berth.settings import Settings
from berth.worker.temporal_server import DB_FILE, PARTITIONS_FILE, task_queue_partitions, temporal_argv


def partition_args(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg.startswith("matching.numTaskqueue")]


def settings_for(home) -> Settings:
    return Settings.from_env({"BERTH_HOME": str(home)})


def test_a_new_database_gets_one_partition_per_queue_and_remembers_it(tmp_path):
    argv = temporal_argv(settings_for(tmp_path))
    assert partition_args(argv) == [
        "matching.numTaskqueueReadPartitions=1",
        "matching.numTaskqueueWritePartitions=1",
    ]
    assert (tmp_path / PARTITIONS_FILE).read_text().strip() == "1"
    (tmp_path / DB_FILE).write_bytes(b"made by the server")  # the server has created it since
    assert partition_args(temporal_argv(settings_for(tmp_path))) == partition_args(argv)


def test_a_database_from_before_keeps_the_servers_default(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"made by an earlier berth")
    assert task_queue_partitions(tmp_path) == 4
    assert partition_args(temporal_argv(settings_for(tmp_path))) == []
    assert not (tmp_path / PARTITIONS_FILE).exists()


def test_an_unreadable_record_falls_back_to_the_servers_default(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"db")
    (tmp_path / PARTITIONS_FILE).write_text("one\n")
    assert task_queue_partitions(tmp_path) == 4


def dynamic_config(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--dynamic-config-value"]


def test_search_attribute_definitions_are_cached_and_a_user_can_ask_for_the_dev_servers_refresh(tmp_path, monkeypatch):
    refresh = "system.forceSearchAttributesCacheRefreshOnRead"
    assert f"{refresh}=false" in dynamic_config(temporal_argv(settings_for(tmp_path)))
    monkeypatch.setenv("BERTH_TEMPORAL_EXTRA_ARGS", f"--dynamic-config-value {refresh}=true")
    values = [value for value in dynamic_config(temporal_argv(settings_for(tmp_path))) if value.startswith(refresh)]
    assert values == [f"{refresh}=false", f"{refresh}=true"]  # the server takes the last
