"""What people read: markdown renderings of decisions, and the pull-request comment."""
