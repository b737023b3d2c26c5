"""Load generation modelled on the lolscale seed's perl data generator."""
