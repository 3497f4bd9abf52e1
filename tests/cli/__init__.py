"""The command line as a whole: option groups, one vocabulary, deprecated spellings, run folders, outputs."""
