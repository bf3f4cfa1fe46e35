"""HTTP for people: the operators' API (`/api/v1`) and console (`/console`)."""
