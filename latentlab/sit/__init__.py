"""The SiT generator, grouped as willisma/SiT groups it: model, transport, training, sampling."""
