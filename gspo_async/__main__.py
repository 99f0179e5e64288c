from gspo_async.cli import entry

entry()
