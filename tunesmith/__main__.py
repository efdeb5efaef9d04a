from tunesmith.cli import app

app(prog_name="tunesmith")
