"""The lending library's domain: books and members, and the Library application service."""
