"""The tfsparse application: the `tfsparse` command, its runner, reports,
plots and method recipes, the data sets and the model zoo.

It is built on the library (`import tfsparse`), which never imports it.
"""
