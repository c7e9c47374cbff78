"""Infrastructure: errors, folder locks, interrupts, progress bars, fault points, atomic JSON."""
