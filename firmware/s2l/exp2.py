# The integer softmax's constants, shared by every flavour of the integer kernels (ikernels.py,
# ikernels_viper.py, ikernels_thumb.py): kept apart so that the flavours need not import
# ikernels.py, which imports them.
from array import array

# 2^-x for the softmax, x in 1/1024 steps: 2^(-k/32) * 32767 and 2^(-k/1024) * 32768, k = 0..31;
# written out, not computed, so that a board's single-precision floats cannot round them apart
EXP2_COARSE = array("H", (32767, 32065, 31378, 30705, 30047, 29404, 28774, 28157, 27554, 26963,
                          26385, 25820, 25267, 24725, 24196, 23677, 23170, 22673, 22187, 21712,
                          21247, 20791, 20346, 19910, 19483, 19066, 18657, 18258, 17866, 17483,
                          17109, 16742))
EXP2_FINE = array("H", (32768, 32746, 32724, 32702, 32679, 32657, 32635, 32613, 32591, 32569,
                        32547, 32525, 32503, 32481, 32459, 32437, 32415, 32393, 32371, 32349,
                        32327, 32306, 32284, 32262, 32240, 32218, 32196, 32175, 32153, 32131,
                        32109, 32088))
LOG2E_Q12 = 5909  # round(log2(e) * 2^12) (the viper and Thumb flavours write it as a literal)
