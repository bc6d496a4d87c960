"""How far a model's outputs moved from a reference's: the measure that
Directed Evolution screens candidates with and the compression bit search
keeps within its budget."""

import keras


def kl_divergence(teacher_logits, student_logits):
    """Mean over examples of KL(softmax(teacher) || softmax(student)); the
    last axis holds the logits, leading axes of the student are kept."""
    teacher = keras.ops.log_softmax(keras.ops.convert_to_tensor(teacher_logits, "float32"), axis=-1)
    student = keras.ops.log_softmax(keras.ops.convert_to_tensor(student_logits, "float32"), axis=-1)
    return keras.ops.mean(keras.ops.sum(keras.ops.exp(teacher) * (teacher - student), axis=-1), axis=-1)
