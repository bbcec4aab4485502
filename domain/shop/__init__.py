"""The example shop's domain: stock items, orders and payments, and the Shop service."""
