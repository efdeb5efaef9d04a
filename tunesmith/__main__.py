from tunesmith.cli import entry

entry(prog_name="tunesmith")
