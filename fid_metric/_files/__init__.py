"""Files: statistics files of every format, image folders and sample batches, atomic writes."""
