/* Bare-metal start-up for the emulated Cortex-M boards the harness runs on (ARMv7-M and ARMv8-M).
 *
 * The vector table sits at the start of code memory, where each QEMU machine's reset reads it. Reset copies
 * .data, zeroes .bss, turns the FPU (and Helium, which shares its enable bits) on for hard-float builds, opens
 * semihosting, runs C++ static constructors and calls main(); main's return value goes back to QEMU through
 * semihosting's exit, so a finished firmware ends the emulator. SysTick counts instructions under
 * `-icount shift=0` (see instruction_counter.h). */
#include <stdint.h>
#include <stdlib.h>

#include "instruction_counter.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __StackTop;
extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

/* Linking with -nostartfiles leaves out crtbegin.o, which defines __dso_handle; C++ function-local statics with
 * destructors (TFLM has some) register them against it. A Cortex-M IDE's or Zephyr's start-up provides it. */
void* __dso_handle = &__dso_handle;
/* crti.o/crtn.o, also left out, define the _init and _fini that newlib's __libc_init_array/__libc_fini_array
 * call; the constructors themselves run from .init_array. */
void _init(void) {}
void _fini(void) {}

void Reset_Handler(void);

static void Fault_Handler(void) {
  /* No output here: semihosting from a fault handler is not safe. The host's time limit reports the hang. */
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) static void (*const vector_table[16 + 32])(void) = {
    (void (*)(void))(&__StackTop),
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (ARMv8-M) */
    0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    SysTick_Handler,
};

void Reset_Handler(void) {
  uint32_t* source = &__data_load__;
  for (uint32_t* target = &__data_start__; target < &__data_end__;) *target++ = *source++;
  for (uint32_t* target = &__bss_start__; target < &__bss_end__;) *target++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  /* CPACR: full access to coprocessors 10 and 11 (the FPU; on Armv8.1-M also the M-profile vector extension). */
  volatile uint32_t* const cpacr = (volatile uint32_t*)0xE000ED88u;
  *cpacr |= (0xFu << 20);
  __asm volatile("dsb\n isb" ::: "memory");
#endif
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}
