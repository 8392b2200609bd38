"""Who is calling and what they may do: users, roles, sessions, tokens, login throttling."""
