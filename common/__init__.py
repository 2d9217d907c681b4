"""Small helpers shared by data_prep, train and eval: config parsing, atomic IO, logging."""
