"""Rolling Forcing distillation: the losses (ODE init, DMD, critic) and the distiller."""
