"""Tables, figures and report writers."""
