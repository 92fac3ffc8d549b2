"""Where input bytes come from: a reader per file with ``read_into(offset, buffer)``.

``local`` reads local files with positional reads into buffers the executor reuses; a new
kind of input (a Hub range reader, an object store) is one new module with the same methods.
"""
