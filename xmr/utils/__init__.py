"""Small shared helpers: safe instantiation, atomic writes, logging."""
